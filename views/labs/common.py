"""Glue shared by the labs: run experiments (or other heavy work) once per key, with a progress bar."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from threading import Lock
from types import SimpleNamespace
from typing import TypeVar

import streamlit as st

from natgrad.bench.protocol import load as load_bench
from natgrad.devices import pick_device
from natgrad.experiments import Spec, Trajectory, run
from natgrad.viz import loss_figure

_MAX_CACHED = 64
BENCH_DIR = Path(__file__).resolve().parents[2] / "docs" / "bench"
T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def _results_cache() -> tuple[OrderedDict, Lock]:
    return OrderedDict(), Lock()


def device() -> str:
    return pick_device().type


HINT = "Choose settings and press **{submit}**. Runs are cached: the same settings come back at once."


def settings_form(key: str, draw: Callable[[], dict], submit: str = "Train",
                  validate: Callable[[dict], str | None] | None = None,
                  hint: str = HINT) -> tuple[dict | None, bool]:
    """A lab's settings form, remembered for the session.

    ``draw()`` lays out the form's widgets and returns their values as a dict. On
    submission the values are checked with ``validate`` (a message in words, or None
    when fine) and remembered under ``key``. Returns ``(settings, submitted)``:
    the last accepted settings of this session (None, with ``hint`` shown, before the
    first submission) and whether this rerun submitted them.
    """
    with st.form(key):
        values = draw()
        submitted = st.form_submit_button(submit, type="primary")
    if submitted:
        problem = validate(values) if validate is not None else None
        if problem:
            st.warning(problem, icon=":material/warning:")
            return None, False
        st.session_state[f"{key}-last"] = values
    settings = st.session_state.get(f"{key}-last")
    if settings is None:
        st.info(hint.format(submit=submit))
    return settings, submitted


def cached(key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()`` once per distinct ``key`` (shared by all sessions, newest
    ``_MAX_CACHED`` kept). An exception is not cached: the next call tries again."""
    cache, lock = _results_cache()
    with lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = compute()
    with lock:
        cache[key] = value
        while len(cache) > _MAX_CACHED:
            cache.popitem(last=False)
    return value


def run_cached(spec: Spec, label: str) -> Trajectory:
    """``natgrad.experiments.run`` once per distinct spec (shared by all sessions),
    with a progress bar while it trains. Streamlit's Stop button (or any widget
    change) interrupts a run; nothing partial is cached."""

    def train() -> Trajectory:
        bar = st.progress(0.0, text=f"Training {label} ...")
        traj = run(spec, progress=lambda done, total: bar.progress(done / total,
                                                                     text=f"Training {label}: step {done}/{total}"))
        bar.empty()
        return traj

    return cached(spec, train)


def report_status(label: str, traj: Trajectory) -> None:
    """Say in words how a run ended when it did not simply finish."""
    if traj.status == "diverged":
        st.warning(f"**{label}**: {traj.message}", icon=":material/trending_up:")
    elif traj.status in ("error", "stopped"):
        st.warning(f"**{label}**: {traj.message}", icon=":material/error:")


def ms_per_step(traj: Trajectory) -> float:
    return 1e3 * traj.seconds[-1] / len(traj.seconds) if traj.seconds else math.nan


def show_runs(key: str, trajs: dict[str, Trajectory]) -> None:
    """How each run ended (in words when not simply finished), loss against steps and
    against seconds in two tabs on shared axes, and final loss with ms/step per run."""
    for label, t in trajs.items():
        report_status(label, t)
    tab_steps, tab_secs = st.tabs(["loss vs steps", "loss vs seconds"])
    tab_steps.plotly_chart(loss_figure(trajs, "step"), key=f"{key}-fig-steps")
    tab_secs.plotly_chart(loss_figure(trajs, "seconds"), key=f"{key}-fig-secs")
    for col, (label, t) in zip(st.columns(len(trajs)), trajs.items(), strict=True):
        col.metric(label, f"{t.final_loss:.4g}", help="loss at the last step", delta=f"{ms_per_step(t):.1f} ms/step",
                   delta_color="off")


def bench_results(name: str, title: str, report: Callable[[dict], str]) -> None:
    """An expander with the stored results of ``python -m natgrad.bench NAME`` (its
    printed report and the tuned loss curves), or how to produce them."""
    result = load_bench(BENCH_DIR / f"{name}.json")
    with st.expander(f"Benchmark: {title} (python -m natgrad.bench {name})"):
        if result is None:
            st.info(f"No benchmark results are stored yet. Run `python -m natgrad.bench {name} "
                    f"--out docs/bench/{name}.json`.")
            return
        st.code(report(result), language=None)
        curves = result.get("curves", {})
        if curves:
            trajs = {f"{k} {v['hparams']}": SimpleNamespace(step=v["step"], seconds=v["seconds"], loss=v["loss"],
                                                             status="ok") for k, v in curves.items()}
            st.plotly_chart(loss_figure(trajs, "seconds", "tuned runs from the benchmark"), key=f"bench-{name}")
