"""A lab far from the learner's window draws its figures only once it comes near (views/labs/figures.py),
through AppTest: a browser session first gets a box of each figure's height and a sensor per lab; when the
sensor reports the lab near, that lab draws its figures, and keeps them on every later run. A session without
a browser (AppTest itself, scripts/lab_defaults.py) draws everything at once. The browser side (the sensor's
script, the rerun of that lab alone) is tested in tests/browser/test_browser.py."""

from __future__ import annotations

import pytest

from course.progress import ENV_VAR
from tests.app.helpers import open_page, start
from views.labs import figures

WAITING = "The figure is drawn as you scroll to it."
RIEMANNIAN = ["st-fig", "rs-fig", "rs-dist", "kl-ternary", "kl-loss", "pe-disk-riemannian", "pe-loss"]


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def chart_keys(at) -> list[str]:
    return [c.proto.id.split("-", 2)[2] for c in at.get("plotly_chart")]  # "$$ID-<hash>-<key>"


def waiting(at) -> int:
    return sum(WAITING in str(c.value) for c in at.caption)


def test_without_a_browser_every_figure_is_drawn_at_once(db):
    at = open_page(start(), "riemannian")
    assert not at.exception
    assert chart_keys(at) == RIEMANNIAN and waiting(at) == 0


def test_in_a_browser_a_lab_draws_its_figures_once_it_is_near(db, monkeypatch):
    monkeypatch.setattr(figures, "_in_browser", lambda: True)
    at = open_page(start(), "riemannian")
    assert not at.exception
    assert chart_keys(at) == [] and waiting(at) == len(RIEMANNIAN)  # every lab is far: its figures wait
    # what is not drawn yet is downloadable all the same: each of the 4 labs recorded its figures
    assert sum("Download this lab's results" in e.label for e in at.expander) == 4
    # the lab's sensor reports it near (what its script does in the browser): that lab draws its figures,
    # the others still wait, and it keeps them on the next run
    at.session_state["_figures-near:hyperbolic-embedding"] = True
    at.run()
    assert chart_keys(at) == ["pe-disk-riemannian", "pe-loss"] and waiting(at) == len(RIEMANNIAN) - 2
    at.run()
    assert chart_keys(at) == ["pe-disk-riemannian", "pe-loss"]


def test_a_waiting_figure_keeps_its_height():
    import plotly.graph_objects as go

    class Box:
        def __init__(self):
            self.calls = []

        def container(self, **kw):
            self.calls.append(kw)
            return self

        def caption(self, text):
            self.calls.append(text)

    for height, expected in ((560, 560), (None, 450)):
        box = Box()
        figures._waiting(go.Figure(layout=dict(height=height)), "k", box)
        assert box.calls[0] == {"height": expected, "border": False, "key": "k-waiting"}
        assert WAITING in box.calls[1]
