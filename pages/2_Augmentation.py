"""Augmentation preview: a run's exact augmentation pipeline on chosen images."""
import numpy as np
import streamlit as st

from cifar_core import ui
from cifar_core.config import AUGMENTATIONS, TrainConfig, recipe_config
from cifar_core.errors import CifarError, ConfigError
from cifar_core.imaging import mosaic
from cifar_core.models import model_names

ui.page("Augmentation preview", "🎲")

records = ui.finished_runs()
choices = ["a run's config"] if records else []
mode = st.radio("Augmentations from", choices + ["a model's recipe", "custom"], horizontal=True, key="aug_mode")
if mode == "a run's config":
    record = ui.pick_runs("Run", key="aug_run")
    config = TrainConfig.from_dict(ui.run_json(record["path"], "config.json"))
elif mode == "a model's recipe":
    config = recipe_config(st.selectbox("Model", model_names(), key="aug_model"))
else:
    picked = st.multiselect("Augmentations", AUGMENTATIONS, default=["flip", "translate"], key="aug_custom")
    try:
        config = TrainConfig(augmentations=tuple(picked))
    except ConfigError as exc:  # e.g. flip together with altflip
        ui.fail(exc)
        st.stop()
st.caption("Pipeline: " + (", ".join(config.augmentations) or "none") + " — applied per batch in tf.data, "
           "exactly as training does.")

data = ui.default_dataset()
if data is None:
    st.error("No dataset found and no shipped sample: set CIFAR10_SOURCE.")
    st.stop()
count = st.slider("Images", 1, 8, 6, key="aug_count")
if "aug_seed" not in st.session_state:
    st.session_state.aug_seed = 0
left, right = st.columns([1, 4])
if left.button("Re-roll", icon=":material/casino:", key="aug_reroll"):
    st.session_state.aug_seed += 1
right.number_input("Seed", 0, 1_000_000, key="aug_seed")
rng = np.random.default_rng(7)
images = data.x_test[rng.choice(len(data.x_test), count, replace=False)]

try:  # drawn by the model worker process, where TensorFlow is already loaded
    views = ui.photo_worker().augment(images, config.to_dict(),
                                      [int(st.session_state.aug_seed) * 10 + k for k in range(3)])
except CifarError as exc:
    ui.fail(exc)
    st.stop()
st.markdown("**Original** (top row), then three augmented draws")
st.image(mosaic(np.concatenate([images, *views]), columns=count, scale=4), clamp=True)
