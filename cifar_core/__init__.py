"""CIFAR-10 classification studio: data, models, training, evaluation.

Everything here is UI-free but ui.py, the dashboard's Streamlit helpers (a test
checks that no other module imports Streamlit); the pages call into it.
"""
import os

# Keras reads this once, at its first import; TensorFlow is the default backend
# but JAX and PyTorch work for model code (tf.data stays in cifar_core.data).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up chatter is noise in a CLI and on a dashboard.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
