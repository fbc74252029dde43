"""Figures that explain themselves, and controls that say what they do, through AppTest:
every slider of every lab has help text, a control that does nothing is switched off with a
note, every figure carries the lesson's caption, a lab asks its prediction first and saves it
like a quiz answer, a run can be drawn over the previous one, a lab's results download, and a
failed sharded run leaves no progress bar behind."""

from __future__ import annotations

import inspect
import json
import re
import sqlite3

import numpy as np
import pytest

from course.lessons import load_lessons
from course.progress import ENV_VAR
from natgrad.distributed import DistributedRunError
from natgrad.viz import PREVIOUS
from tests.app.helpers import open_page, start, submit
from views.labs import LABS, common
from views.labs import sharding as sharding_lab

LESSONS = load_lessons()
LAB_PAGES = [x.slug for x in LESSONS if any(lab.id in LABS for lab in x.labs)]
MAX_LABEL = 45  # characters: a widget label this long still fits a third of the page on one or two lines


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "p.sqlite3"
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def _lab(lab_id: str):
    return next(lab for x in LESSONS for lab in x.labs if lab.id == lab_id)


def _chart(at, key: str) -> dict:
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert len(charts) == 1, f"{len(charts)} charts with key {key}"
    return json.loads(charts[0].proto.spec)


def test_every_built_lab_asks_a_prediction_and_captions_its_figures():
    for lab_id in LABS:
        lab = _lab(lab_id)
        assert lab.predict is not None, f"lab {lab_id}: no predict question in its lesson.yaml"
        assert lab.captions, f"lab {lab_id}: no captions in its lesson.yaml"


SHARED = ("-fig-steps", "-fig-secs", "-traces")  # drawn by show_runs / safeguard_traces under the lab's form key


def _drawn_by(key: str, src: str) -> bool:
    """Whether source ``src`` draws a figure under ``key``: literally, as a form key whose shared run
    figures take it, as an f-string head with its tail among the source's strings, or as a stored
    benchmark."""
    if f'"{key}"' in src:
        return True
    if any(key.endswith(s) and f'"{key[: -len(s)]}"' in src for s in SHARED):
        return True
    head, _, tail = key.rpartition("-")
    if f'f"{head}-{{' in src and f'"{tail}"' in src:
        return True
    return key.startswith("bench-") and f'bench_results("{key[len("bench-"):]}"' in src


def test_every_caption_names_a_figure_its_lab_draws():
    """No caption for a figure that does not exist: each caption's key is one the lab's module draws
    (the run figures and benchmark curves through views/labs/common.py)."""
    for lab_id, render in LABS.items():
        src = inspect.getsource(inspect.getmodule(inspect.unwrap(render)))
        for key, _ in _lab(lab_id).captions:
            assert _drawn_by(key, src), f"lab {lab_id}: a caption for {key!r}, a figure its code never draws"
    assert not _drawn_by("kt-fig-nothing", inspect.getsource(common))


@pytest.mark.parametrize("slug", LAB_PAGES)
def test_every_slider_of_every_lab_has_help_in_plain_words(db, slug):
    at = open_page(start(), slug)
    assert not at.exception, at.exception
    widgets = list(at.slider) + list(at.select_slider) + list(at.number_input)
    assert widgets, f"{slug}: no sliders found"
    for w in widgets:
        assert w.help and len(w.help.split()) >= 4, f"{slug}: slider {w.label!r} ({w.key}) has no help text"
        assert len(w.label) <= MAX_LABEL, f"{slug}: label {w.label!r} is long enough to be cut off"


def test_controls_that_do_nothing_are_switched_off_with_a_note(db):
    at = open_page(start(), "damping")
    assert at.radio(key="dl-rule").value == "quadratic"
    assert at.select_slider(key="dl-klr").disabled
    assert any("quadratic model chooses the step size" in c.value for c in at.caption)
    at.radio(key="dl-rule").set_value("fixed")
    at = at.run()
    assert not at.select_slider(key="dl-klr").disabled
    at = open_page(at, "distributed-shampoo")
    assert at.radio(key="sh-fault").value == "none" and at.select_slider(key="sh-frank").disabled
    at.radio(key="sh-fault").set_value("raise")
    assert not at.run().select_slider(key="sh-frank").disabled


def test_prediction_saved_captions_shown_previous_run_overlaid_and_results_downloadable(db):
    """The simplex lab (a few float64 steps, quick): predict, run, change a setting, run again,
    overlay the previous run; every figure carries its caption."""
    lab = _lab("simplex-natural-gradient")
    at = open_page(start(), "riemannian")
    choice = lab.predict.options[0]
    at.radio(key="predict:simplex-natural-gradient:choice").set_value(choice.id)
    at = submit(at, "predict:simplex-natural-gradient")
    assert not at.exception, at.exception
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT lesson, question, kind, response FROM attempts").fetchall()
    assert ("riemannian", "predict-simplex-natural-gradient", "prediction", json.dumps(choice.id)) in rows
    assert any(f"Your prediction: **{choice.text}**" in c.value for c in at.caption)

    # the lab opens on its shipped run at the default settings: nothing to overlay yet
    assert at.toggle(key="kl-overlay").disabled
    at.select_slider(key="kl-steps").set_value(10)
    at = submit(at, "kl")
    assert not at.exception, at.exception
    captions = [c.value for c in at.caption]
    for key, text in lab.captions:
        assert any(text in c for c in captions), f"no caption under {key}"
    assert any(f"You predicted: **{choice.text}**" in c for c in captions)
    assert not at.toggle(key="kl-overlay").disabled  # the opening run can now be overlaid

    at.select_slider(key="kl-steps").set_value(20)
    at = submit(at, "kl")
    at.toggle(key="kl-overlay").set_value(True)
    at = at.run()
    assert not at.exception, at.exception
    traces = _chart(at, "kl-loss")["data"]
    previous = [t for t in traces if PREVIOUS in t.get("name", "")]
    assert {t["name"] for t in previous} == {f"natural gradient {PREVIOUS}", f"projected GD {PREVIOUS}"}
    assert all(t["line"]["dash"] == "dash" for t in previous)
    assert [len(t["x"]) for t in previous] == [10, 10] and len(traces[0]["x"]) == 20
    assert any("changed since: steps 10 → 20" in c.value for c in at.caption)
    # the download buttons are drawn once their expander is opened
    assert not at.get("download_button")
    at.session_state["simplex-natural-gradient-downloads"] = True
    at = at.run()
    names = [b.proto.label for b in at.get("download_button")]
    assert "the runs, step by step (CSV)" in names and any(n.endswith("(HTML)") for n in names)


def test_a_failed_sharded_run_leaves_no_progress_bar(db, monkeypatch):
    def fail(cfg, progress):
        progress(0.0, "Training: step 0/20")
        raise DistributedRunError("rank 1 failed: injected")

    monkeypatch.setattr(sharding_lab, "run_sharded", fail)
    at = open_page(start(), "distributed-shampoo")
    at.select_slider(key="sh-steps").set_value(10)  # the defaults' run ships with the app: no launch
    at = submit(at, "sh")
    assert not at.exception, at.exception
    assert any("rank 1 failed" in e.value for e in at.error)
    bars = [p for p in at.get("progress") if re.search(r"step \d+/\d+|Starting", str(p.proto))]
    assert not bars, "a progress bar stayed under the error"



def _fisher_lab_csv() -> None:
    """A script: the Fisher-blocks lab drawn alone, then the CSV its download would give, as code."""
    import streamlit as st

    from course.lessons import load_lessons
    from views.labs import figures, kfac

    lab = next(x for lesson in load_lessons() for x in lesson.labs if x.id == "fisher-blocks")
    st.session_state["fb-step"] = 0  # the random starting weights: the matrices are quick to recompute
    with figures.lab_context(lab) as state:
        kfac.fisher_blocks(lab)
    st.code(figures.figures_csv(state.figures, state.matrices), language=None)


def test_the_fisher_heatmaps_download_every_entry(db):
    """The heatmaps are images (their colours carry no numbers): the lab's CSV still holds every entry
    of the three matrices, equal to natgrad's Fisher snapshot at the same weights."""
    import csv
    import io

    from streamlit.testing.v1 import AppTest

    from natgrad.snapshots import fisher_snapshot

    at = AppTest.from_function(_fisher_lab_csv, default_timeout=120).run()
    assert not at.exception, at.exception
    rows = list(csv.reader(io.StringIO(at.code[-1].value)))
    assert rows[0] == ["figure", "trace", "x", "y", "z"]
    snap = fisher_snapshot(train_steps=0)
    for name, matrix in snap.matrices.items():
        key = {"exact Fisher": "fb-fig-exact", "block diagonal": "fb-fig-blocks", "K-FAC": "fb-fig-kfac"}[name]
        mine = [r for r in rows[1:] if r[0] == key]
        assert len(mine) == matrix.size  # one row per entry, none for the colour bar's empty trace
        got = np.zeros(matrix.shape)
        for _, trace, x, y, z in mine:
            assert trace == name
            got[int(float(y)), int(float(x))] = float(z)
        np.testing.assert_allclose(got, matrix, rtol=1e-6, atol=1e-7 * np.abs(matrix).max())


def test_the_numbers_behind_a_line_figure_are_its_points():
    import csv
    import io

    import plotly.graph_objects as go

    from views.labs.figures import figures_csv

    fig = go.Figure([go.Scatter(x=[0, 1, 2], y=[3.0, 2.5, 0.125], name="Adam"),
                     go.Scatter(x=[0, 5], y=[1e-9, 7.0], name="K-FAC")])
    rows = list(csv.reader(io.StringIO(figures_csv({"loss": fig}))))
    assert rows == [["figure", "trace", "x", "y"], ["loss", "Adam", "0", "3.0"], ["loss", "Adam", "1", "2.5"],
                    ["loss", "Adam", "2", "0.125"], ["loss", "K-FAC", "0", "1e-09"], ["loss", "K-FAC", "5", "7.0"]]
