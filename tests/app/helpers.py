"""Drive the whole app in Streamlit's AppTest, page by page."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 120


def start() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT).run()


def open_page(at: AppTest, url_path: str) -> AppTest:
    """Switch to the st.navigation page registered under ``url_path``.

    AppTest.switch_page only takes file paths; our lesson pages are callables
    registered by url path, so look the hash up in the registry AppTest keeps.
    """
    hashes = [h for h, info in at._registered_pages.items() if info.get("url_pathname") == url_path]
    assert hashes, f"no page registered at /{url_path}: {[i.get('url_pathname') for i in at._registered_pages.values()]}"
    at._page_hash = hashes[0]
    return at.run()


def submit(at: AppTest, form_id: str) -> AppTest:
    buttons = [b for b in at.button if b.form_id == form_id]
    assert len(buttons) == 1, f"form {form_id}: {len(buttons)} submit buttons"
    return buttons[0].click().run()


def texts(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "success", "error", "warning", "info", "title", "header", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def run_lab(url_path: str, form_id: str, sliders: dict | None = None, radios: dict | None = None) -> AppTest:
    """Open a lesson page, set select sliders and radios by key, press the lab form's
    submit button, and check the script raised nothing."""
    at = open_page(start(), url_path)
    for key, value in (sliders or {}).items():
        at.select_slider(key=key).set_value(value)
    for key, value in (radios or {}).items():
        at.radio(key=key).set_value(value)
    at = submit(at, form_id)
    assert not at.exception, at.exception
    return at
