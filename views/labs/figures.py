"""Figures in a lab: each drawn with the lines on what to look for that the lesson data gives it,
every figure downloadable (HTML, and the numbers behind it as CSV) with the lab's runs (CSV),
and a run overlaid on the learner's previous one.

A lab renderer runs inside :func:`lab_context` (``views.labs.LABS`` wraps every renderer):
:func:`chart` draws a figure and records it, :func:`register_runs` records the runs, and
:func:`downloads` offers what was recorded at the end of the lab.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from course.lessons import Lab
from course.progress import csv_safe
from natgrad.viz import PREVIOUS


@dataclass
class _LabState:
    lab: Lab
    figures: dict[str, go.Figure] = field(default_factory=dict)  # key -> figure, in drawing order
    matrices: dict[str, np.ndarray] = field(default_factory=dict)  # key -> the matrix a figure shows as an image
    runs: dict[str, object] = field(default_factory=dict)  # label -> Trajectory (or anything with step/loss)


_STATE: ContextVar[_LabState | None] = ContextVar("natgrad_lab", default=None)

PNG_NOTE = ("The HTML files open in any browser, offline: plotly is inside them. For a PNG, use the camera "
            "icon in a figure's toolbar (top right of the figure): your browser draws the image, no extra "
            "software is needed on the server.")


@contextmanager
def lab_context(lab: Lab) -> Iterator[_LabState]:
    """While a lab is drawn: which lab it is (for captions) and what it drew (for downloads)."""
    state = _LabState(lab)
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def _state() -> _LabState | None:
    return _STATE.get()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def chart(fig: go.Figure, key: str, where=None, *, matrix: np.ndarray | None = None) -> None:
    """Draw ``fig`` (in ``where``, a column or tab; default the page) with the lesson's caption for
    ``key`` under it, and record it for the lab's downloads. ``matrix``: the values a figure shows as
    an image (a Fisher heatmap's colours carry no numbers), for the CSV of the numbers behind it."""
    where = where if where is not None else st
    filename = _slug(key)
    where.plotly_chart(fig, key=key, config={"displaylogo": False,
                                             "toImageButtonOptions": {"format": "png", "filename": filename,
                                                                      "scale": 2}})
    state = _state()
    if state is None:
        return
    state.figures[key] = fig
    if matrix is not None:
        state.matrices[key] = np.asarray(matrix)
    if text := state.lab.caption(key):
        where.caption(f":material/visibility: {text}")


def register_runs(trajs: Mapping[str, object]) -> None:
    """Record the lab's runs (label -> trajectory) for its CSV download."""
    state = _state()
    if state is not None:
        state.runs.update({k: v for k, v in trajs.items() if PREVIOUS not in k})


# ------------------------------------------------------------------------------------------ CSV
def _cell(v) -> object:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, (int, np.integer)):
        return int(v)
    return csv_safe(str(v))


def runs_csv(runs: Mapping[str, object]) -> str:
    """One row per recorded step of every run: run, step, seconds, loss, then every scalar the run
    recorded beside them (damping, rho, clipped fraction, ...)."""
    extras = sorted({k for t in runs.values() for k in getattr(t, "extras", {}) or {}})
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC)
    w.writerow(["run", "step", "seconds", "loss", *extras])
    for label, t in runs.items():
        ex = getattr(t, "extras", {}) or {}
        for i, step in enumerate(t.step):
            row = [label, step, t.seconds[i] if i < len(t.seconds) else None, t.loss[i] if i < len(t.loss) else None]
            row += [ex[k][i] if k in ex and i < len(ex[k]) else None for k in extras]
            w.writerow([_cell(v) for v in row])
    return out.getvalue()


_FIELDS = ("x", "y", "z", "a", "b", "c")


def _title(fig: go.Figure, key: str) -> str:
    text = fig.layout.title.text if fig.layout.title and fig.layout.title.text else key
    return re.sub(r"<[^>]+>", " ", text).strip()


def figures_csv(figures: Mapping[str, go.Figure], matrices: Mapping[str, np.ndarray] | None = None) -> str:
    """The numbers behind the figures: one row per drawn point, named by figure and trace. A
    figure with a matrix in ``matrices`` (drawn as an image) gives one row per entry: x = column,
    y = row, z = the entry's value, under the image's name."""
    matrices = matrices or {}
    rows = []
    for key, fig in figures.items():
        for i, t in enumerate(fig.data):
            name = t.name or f"trace {i + 1}"
            if t.type in ("heatmap", "image"):
                z = matrices.get(key) if t.type == "image" else t.customdata if t.customdata is not None else t.z
                if z is None:
                    continue
                z = np.asarray(z, dtype=float)
                for r in range(z.shape[0]):
                    rows += [[key, name, c, r, z[r, c], None, None, None] for c in range(z.shape[1])]
                continue
            cols = []
            for f in _FIELDS:
                v = getattr(t, f, None)
                cols.append(None if v is None or isinstance(v, str) else list(np.asarray(v, dtype=object).ravel()))
            if all(v is None for c in cols if c is not None for v in c):
                continue  # nothing drawn: a trace that only carries a colour bar
            n = max((len(c) for c in cols if c is not None), default=0)
            for j in range(n):
                rows.append([key, name, *[c[j] if c is not None and j < len(c) else None for c in cols]])
    used = [k for k, f in enumerate(_FIELDS) if any(r[2 + k] is not None for r in rows)]
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC)
    w.writerow(["figure", "trace", *[_FIELDS[k] for k in used]])
    for r in rows:
        w.writerow([_cell(r[0]), _cell(r[1]), *[_cell(r[2 + k]) for k in used]])
    return out.getvalue()


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of the figure that works offline (plotly.js embedded)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def downloads() -> None:
    """At the end of a lab: its runs (CSV), the numbers behind its figures (CSV) and each figure
    (HTML). The buttons are drawn only once the expander is opened (opening it reruns the lab), and
    files are made only when a button is pressed."""
    state = _state()
    if state is None or not state.figures:
        return
    lab = state.lab
    box = st.expander("Download this lab's results", icon=":material/download:", key=f"{lab.id}-downloads",
                      on_change="rerun")
    if not box.open:
        return
    with box:
        cols = st.columns(2)
        if state.runs:
            runs = dict(state.runs)
            cols[0].download_button("the runs, step by step (CSV)", data=lambda: runs_csv(runs), on_click="ignore",
                                    file_name=f"{lab.id}-runs.csv", mime="text/csv", key=f"{lab.id}-dl-runs",
                                    icon=":material/table:",
                                    help="One row per step of every run: loss, seconds and what the optimizer "
                                         "recorded.")
        figures, matrices = dict(state.figures), dict(state.matrices)
        cols[1].download_button("the numbers behind the figures (CSV)", data=lambda: figures_csv(figures, matrices),
                                on_click="ignore", file_name=f"{lab.id}-figures.csv", mime="text/csv",
                                key=f"{lab.id}-dl-figdata", icon=":material/table:",
                                help="One row per point drawn, named by figure and curve.")
        for i, (key, fig) in enumerate(figures.items()):
            cols[i % 2].download_button(f"{_title(fig, key)} (HTML)", data=lambda fig=fig: figure_html(fig),
                                        on_click="ignore", file_name=f"{_slug(key)}.html", mime="text/html",
                                        key=f"{lab.id}-dl-{key}", icon=":material/image:",
                                        help="An interactive copy of the figure that opens in any browser.")
        st.caption(PNG_NOTE)


# ------------------------------------------------------------------------------- previous run
def _signature(trajs: Mapping[str, object]) -> tuple:
    return tuple((label, getattr(t, "spec", None) or id(t)) for label, t in trajs.items())


def _changes(before: Mapping | None, now: Mapping | None) -> str:
    if not before or not now:
        return ""
    diff = [f"{k} {before[k]} → {now[k]}" for k in now if k in before and before[k] != now[k]]
    return ("; changed since: " + ", ".join(str(d) for d in diff[:4])) if diff else ""


def with_previous(key: str, trajs: Mapping[str, object], settings: Mapping | None = None) -> dict[str, object]:
    """``trajs`` and, when the learner asks for it, their previous run of this lab (its labels
    marked :data:`natgrad.viz.PREVIOUS`, drawn dashed in the same colours). The previous run is
    the last one with other settings in this browser session."""
    slot = f"_previous-run:{key}"
    current, previous = st.session_state.get(slot, (None, None))
    sig = _signature(trajs)
    if current is None or current[0] != sig:
        previous = current
        current = (sig, dict(trajs), dict(settings or {}))
        st.session_state[slot] = (current, previous)
    register_runs(trajs)
    help_text = ("Draw the run before this one (other settings) dashed, in the same colours, to see what your "
                 "change did.")
    if previous is None:
        st.toggle("Overlay my previous run", value=False, disabled=True, key=f"{key}-overlay",
                  help=help_text + " There is none yet: change a setting and run again.")
        return dict(trajs)
    on = st.toggle("Overlay my previous run", value=False, key=f"{key}-overlay", help=help_text)
    if not on:
        return dict(trajs)
    st.caption(f"Dashed: your previous run{_changes(previous[2], current[2])}.")
    return dict(trajs) | {f"{label} {PREVIOUS}": t for label, t in previous[1].items()}


def run_metrics(trajs: Mapping[str, object], ms_per_step) -> None:
    """Final loss per run, with its time per step beneath in grey: a cost, so no arrow and no colour."""
    for col, (label, t) in zip(st.columns(len(trajs)), trajs.items(), strict=True):
        col.metric(label, f"{t.final_loss:.4g}", help="the training loss at the last step",
                   delta=f"{ms_per_step(t):.1f} ms/step", delta_color="off", delta_arrow="off")
