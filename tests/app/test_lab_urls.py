"""Lab settings live in the query string: a link opens a lab as it was set, and a link with
values a widget cannot take opens the lab at its defaults with a message, never a traceback."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from course.progress import ENV_VAR
from tests.app.helpers import APP, TIMEOUT, open_page, texts

ROOT = Path(__file__).resolve().parents[2]
WIDGETS = {"select_slider", "slider", "radio", "toggle", "number_input", "selectbox", "multiselect", "checkbox",
           "text_input"}


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def _open_with(slug: str, params: dict[str, str]) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in params.items():
        at.query_params[k] = v
    return open_page(at.run(), slug)


def _param(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[-1] if isinstance(value, list) else value


def test_a_link_opens_the_damping_lab_as_it_was_set_and_keeps_the_learner():
    at = _open_with("damping", {"learner": "ada", "dl-steps": "50", "dl-damp": "0.1", "dl-lm": "false",
                                "dl-rule": "fixed learning rate"})
    assert not at.exception, at.exception
    assert at.select_slider(key="dl-steps").value == 50
    assert at.select_slider(key="dl-damp").value == 0.1
    assert at.toggle(key="dl-lm").value is False
    assert at.radio(key="dl-rule").value == "fixed"
    # not trained yet: the lab says where the settings came from and waits for the button
    assert any("These settings came from the link" in i.value for i in at.info)
    assert _param(at, "learner") == "ada"  # a parameter that is not a lab's is left alone
    assert _param(at, "dl-steps") == "50"
    assert not [w for w in at.warning if "link could not be used" in w.value]


def test_bad_values_in_a_link_fall_back_to_the_defaults_with_a_message():
    at = _open_with("damping", {"dl-steps": "lots", "dl-damp": "-1", "dl-rule": "newton", "dl-lm": "maybe",
                                "dl-inv": "5"})
    assert not at.exception, at.exception
    assert "Traceback" not in texts(at)
    assert at.select_slider(key="dl-steps").value == 200
    assert at.select_slider(key="dl-damp").value == 0.01
    assert at.radio(key="dl-rule").value == "quadratic"
    assert at.toggle(key="dl-lm").value is True
    note = next(w.value for w in at.warning if "link could not be used" in w.value)
    for bad in ("`dl-steps` = lots", "`dl-damp` = -1", "`dl-rule` = newton", "`dl-lm` = maybe"):
        assert bad in note, note
    assert "dl-inv" not in note  # the default written out is not a problem
    for k in ("dl-steps", "dl-damp", "dl-rule", "dl-lm", "dl-inv"):
        assert k not in at.query_params  # Streamlit drops what it cannot use (and defaults)


def test_a_link_sets_widgets_outside_a_form():
    at = _open_with("kfac", {"kc-m": "4096", "kc-n": "4095"})
    assert not at.exception, at.exception
    table = [df for df in at.table if "memory" in df.value.columns][0].value
    assert dict(zip(table["name"], table["memory"], strict=True))["K-FAC (A and G)"] == "134 MB"


def _widget_keys() -> list[tuple[str, str, bool]]:
    """(file, key or f-string prefix, bound) for every keyed widget call in views/labs."""
    out = []
    for path in sorted((ROOT / "views" / "labs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WIDGETS:
                kw = {k.arg: k.value for k in node.keywords}
                if "key" not in kw:
                    continue
                key = kw["key"]
                text = key.value if isinstance(key, ast.Constant) else ast.unparse(key)
                bound = isinstance(kw.get("bind"), ast.Constant) and kw["bind"].value == "query-params"
                out.append((path.name, text, bound))
    return out


def test_every_lab_widget_is_in_the_url_under_a_key_no_other_lab_uses():
    keys = _widget_keys()
    assert len(keys) > 60
    # Two widgets belong to the learner's session, not to the lab's settings, and stay out of
    # a shared link: the prediction (an answer, saved like a quiz answer) and the overlay of
    # "my previous run" (which exists only in the session that made it).
    session_only = {"f'predict:{lab.id}:choice'", "f'{key}-overlay'"}
    assert [k for k in keys if not k[2] and k[1] not in session_only] == []
    literal = [k for _, k, _ in keys if not k.startswith("f")]
    assert len(literal) == len(set(literal)), sorted(k for k in literal if literal.count(k) > 1)
    prefixes = {}
    for name, k, _ in keys:
        prefix = k.lstrip("f\"'").split("-")[0]
        prefixes.setdefault(prefix, set()).add(name)
    shared = {p: files for p, files in prefixes.items() if len(files) > 1 and p != "{key}"}
    assert shared == {}, shared  # one prefix, one module (kfac's {key}-... serves kt and dl)


def test_an_infinite_number_in_a_link_falls_back_to_the_default_with_a_message():
    # Streamlit reads a whole number from the link with int(float(text)): '1e400' raised OverflowError inside the
    # lab at every rerun ("This lab stopped with an error"), the value staying in the link
    at = _open_with("kfac", {"kc-m": "1e400", "kc-n": "-inf", "learner": "inf"})
    assert not at.exception, at.exception
    assert not [e for e in at.error if "stopped" in e.value]
    assert at.number_input(key="kc-m").value == 4096 and at.number_input(key="kc-n").value == 4096
    note = next(w.value for w in at.warning if "link could not be used" in w.value)
    assert "`kc-m` = 1e400 is not a finite number" in note and "`kc-n` = -inf is not a finite number" in note
    assert "kc-m" not in at.query_params and _param(at, "learner") == "inf"  # a learner may be called 'inf'
    at = at.run()  # and the lab stays usable
    assert not at.exception and at.number_input(key="kc-m").value == 4096
