"""Thin Streamlit pages. Each module exposes ``render(...)``; ``app.py`` wires
them into ``st.navigation``.

Why ``views/`` and not ``pages/``: Streamlit treats a folder named ``pages``
next to the main script as legacy multipage scripts. Until ``st.navigation``
has run once in the process, a request for ``/home`` or ``/progress`` would
execute ``pages/home.py`` bare (no sidebar, empty page). Naming the folder
``views`` keeps ``st.navigation`` the only router.
"""
