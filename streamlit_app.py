"""The dashboard's entry point: `streamlit run streamlit_app.py`. Pages live in pages/."""
from cifar_core import ui

ui.warm_up_models()  # once per server: the model worker warms up on the other core while pages draw
ui.navigation().run()
