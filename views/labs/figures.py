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
import threading
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
    draw: bool = True  # False: the lab is far from the learner's window; its figures wait (figures_near)


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


# --------------------------------------------------------------------------------------- drawn when near
# A lesson page holds 3-5 labs and up to 7 figures, most of them far below the window when the page opens. The
# first figure a browser draws costs it about 0.85 s with an empty cache (Streamlit's front end loads and
# compiles plotly, 4.7 MB of JavaScript: measured on a page with one small figure) and each further one tens of
# ms, so a lab draws its figures only once any part of it comes within NEAR_MARGIN of the window. Until then
# each figure is an empty box of its own height (the page does not jump when it is drawn), and the lab's
# computations and downloads are as always. A tiny component in the lab watches the lab's frame and, the first
# time it comes near, reruns the lab (its fragment alone); the session remembers it. A session without a browser
# (AppTest, scripts/lab_defaults.py) runs no JavaScript and draws every figure at once.
NEAR_MARGIN = "400px 0px"
WAITING = "-waiting"  # the key suffix of a figure's box while it waits (the sensor looks for it)
NEAR_JS = """
export default function ({ parentElement, setStateValue, data }) {
  const host = parentElement.host || parentElement;
  const frame = (host.closest && host.closest('[data-testid="stVerticalBlock"]')) || host;
  let near = false, asked = 0;
  // a new number each time, so that each is a change that reruns the lab; asked again each second while the
  // lab is near and a figure in it still waits, in case the rerun it asked for did not come
  const ask = () => {
    if (!near || (asked && !frame.querySelector(`[class*="${data.waiting}"]`))) return;
    setStateValue("near", ++asked);
    host.setAttribute("data-near-asked", String(asked));  // (for tests: how many times it asked)
  };
  // the margin counts only on the box that scrolls (Streamlit's main area; on some screens the page itself):
  // an ancestor that scrolls clips what the window's margin would reach
  const main = host.closest && host.closest('[data-testid="stMain"]');
  const scrolls = main && ["auto", "scroll"].includes(getComputedStyle(main).overflowY) ? main : null;
  const watch = new IntersectionObserver(entries => { near = entries.some(e => e.isIntersecting); ask(); },
                                         { root: scrolls, rootMargin: data.margin });
  watch.observe(frame);
  const again = setInterval(ask, 1000);
  return () => { watch.disconnect(); clearInterval(again); };
}
"""
_SENSOR: list = []
_SENSOR_LOCK = threading.Lock()


def _sensor():
    """The component that reports a lab's frame near the window (registered once per process, by the first
    script run that needs it)."""
    with _SENSOR_LOCK:
        if not _SENSOR:
            _SENSOR.append(st.components.v2.component("natgrad_course.near", html="<span></span>", js=NEAR_JS))
        return _SENSOR[0]


def _in_browser() -> bool:
    """Whether this session is a browser's (which runs the component's script): its request had a User-Agent."""
    try:
        return bool(st.context.headers.get("User-Agent"))
    except Exception:  # noqa: BLE001 - no request at all: not a browser
        return False


def figures_near(lab: Lab) -> bool:
    """Whether ``lab`` draws its figures in this run (see the comment above); when not, a sensor is drawn that
    reruns the lab once the lab comes near the window."""
    flag = f"_figures-near:{lab.id}"
    if st.session_state.get(flag) or not _in_browser():
        return True
    seen = _sensor()(key=f"near-sensor-{lab.id}", data={"margin": NEAR_MARGIN, "waiting": WAITING}, default={"near": 0},
                     on_near_change=lambda: None)
    if getattr(seen, "near", 0):  # how many times the browser asked: once is enough
        st.session_state[flag] = True
        return True
    return False


def _waiting(fig: go.Figure, key: str, where) -> None:
    """The box a figure will be drawn in: its height, a line saying so."""
    height = fig.layout.height if isinstance(fig.layout.height, (int, float)) and fig.layout.height > 0 else 450
    box = where.container(height=int(height), border=False, key=key + WAITING)
    box.caption(":material/hourglass_empty: The figure is drawn as you scroll to it.")


def chart(fig: go.Figure, key: str, where=None, *, matrix: np.ndarray | None = None) -> None:
    """Draw ``fig`` (in ``where``, a column or tab; default the page) with the lesson's caption for
    ``key`` under it, and record it for the lab's downloads. ``matrix``: the values a figure shows as
    an image (a Fisher heatmap's colours carry no numbers), for the CSV of the numbers behind it."""
    where = where if where is not None else st
    filename = _slug(key)
    state = _state()
    if state is not None and not state.draw:
        _waiting(fig, key, where)
    else:
        where.plotly_chart(fig, key=key, config={"displaylogo": False,
                                                 "toImageButtonOptions": {"format": "png", "filename": filename,
                                                                          "scale": 2}})
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
