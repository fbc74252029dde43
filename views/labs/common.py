"""Glue shared by the labs: run experiments once per spec, with a progress bar."""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

import streamlit as st

from natgrad.devices import pick_device
from natgrad.experiments import Spec, Trajectory, run

_MAX_CACHED = 64


@st.cache_resource(show_spinner=False)
def _trajectory_cache() -> tuple[OrderedDict, Lock]:
    return OrderedDict(), Lock()


def device() -> str:
    return pick_device().type


def run_cached(spec: Spec, label: str) -> Trajectory:
    """``natgrad.experiments.run`` once per distinct spec (shared by all sessions),
    with a progress bar while it trains. Streamlit's Stop button (or any widget
    change) interrupts a run; nothing partial is cached."""
    cache, lock = _trajectory_cache()
    with lock:
        if spec in cache:
            cache.move_to_end(spec)
            return cache[spec]
    bar = st.progress(0.0, text=f"Training {label} ...")
    traj = run(spec, progress=lambda done, total: bar.progress(done / total, text=f"Training {label}: step {done}/{total}"))
    bar.empty()
    with lock:
        cache[spec] = traj
        while len(cache) > _MAX_CACHED:
            cache.popitem(last=False)
    return traj


def report_status(label: str, traj: Trajectory) -> None:
    """Say in words how a run ended when it did not simply finish."""
    if traj.status == "diverged":
        st.warning(f"**{label}**: {traj.message}", icon=":material/trending_up:")
    elif traj.status in ("error", "stopped"):
        st.warning(f"**{label}**: {traj.message}", icon=":material/error:")
