"""Model zoo: registry of homebrew and transfer-learning builders."""
from .registry import REGISTRY, ModelSpec, build_model, get_spec, is_transfer_model, model_names

__all__ = ["REGISTRY", "ModelSpec", "build_model", "get_spec", "is_transfer_model", "model_names"]
