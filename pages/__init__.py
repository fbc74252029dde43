"""Thin Streamlit pages. Each module exposes ``render(...)``; ``app.py`` wires
them into ``st.navigation``."""
