"""The dashboard's entry point: `streamlit run streamlit_app.py`. Pages live in pages/."""
from cifar_core import ui

ui.navigation().run()
