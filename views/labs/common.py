"""Glue shared by the labs: the lab frame (a fragment), the remembered settings form, and runs shared
between learners (queued, with progress, stoppable), with the opening settings' results shipped as data.

* Every lab is drawn by :func:`render_lab` inside its own ``st.fragment``
  (``views/labs/__init__.py``): moving a lab's widget reruns that lab, not the page.
* :func:`settings_form` remembers the last submitted settings per session. Before
  the first submission a lab shows the form's opening values (its defaults, or
  the settings in the link) *when their results are at hand*: computed by anyone
  earlier on this server, or shipped in ``views/labs/defaults/`` (see
  :mod:`views.labs.stored`); otherwise it asks the learner to press the button.
* :func:`run_all`, :func:`run_cached` and :func:`cached` hand the work to the
  server's :class:`course.jobs.Jobs`: one run per distinct key, shared by every
  learner who asks for it, at most ``$NATGRAD_COURSE_TRAININGS`` at once (half
  the CPU cores by default), first come first served. A waiting learner sees
  the progress, or their place in the queue, and a Stop button.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import streamlit as st
from streamlit.errors import StreamlitAPIException

from course.jobs import Cancelled, Job, Jobs, default_workers
from course.lessons import Lab
from natgrad.bench.protocol import load as load_bench
from natgrad.devices import pick_device
from natgrad.experiments import Spec, Trajectory, run
from natgrad.viz import hparams_text, loss_figure
from views.labs import DROPPED_LINK_VALUES, stored
from views.labs.figures import chart, run_metrics, with_previous

log = logging.getLogger(__name__)

_MAX_CACHED = 64
TUNED = ("lr", "damping", "rho")  # the hyper-parameters a benchmark tunes, named in its legends
BENCH_DIR = Path(__file__).resolve().parents[2] / "docs" / "bench"
POLL_S = 1.0  # while a lab waits in a fragment rerun, it reruns itself this often so that clicks get through
T = TypeVar("T")
LAB_STOPPED = "This lab stopped with an error"

# set by scripts/lab_defaults.py: key text -> result of everything the labs' opening settings ask for
RECORDER: dict[str, Any] | None = None
# key texts of opening results (no settings from a link) that were neither shipped nor computed yet
MISSED: set[str] = set()


@st.cache_resource(show_spinner=False)
def jobs() -> Jobs:
    """The server's one registry of shared runs."""
    return Jobs(workers=default_workers(), keep=_MAX_CACHED)


SHIPPED_ENV = "NATGRAD_COURSE_SHIPPED"  # "0": ignore the shipped opening results (to time real training)


@functools.lru_cache(maxsize=1)
def shipped_file() -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped opening results (entries, meta), read once per server: about 0.4 s for the
    3 MB file, so the app reads it in the background when it starts (``views.labs.warm_up``)."""
    return ({}, {}) if os.environ.get(SHIPPED_ENV, "1") == "0" else stored.load()


@st.cache_resource(show_spinner=False)
def _shipped() -> tuple[dict[str, Any], dict[str, Any], set]:
    entries, meta = shipped_file()
    return entries, meta, set()  # the last: keys served from the file (their results say so)


def device() -> str:
    return pick_device().type


class NotReady(Exception):
    """The opening settings' results are not at hand; the learner is asked to press the button."""


class RunStopped(Exception):
    """The learner pressed Stop."""


@dataclass
class LabRun:
    """What one run of one lab found out while drawing (see :func:`render_lab`)."""

    lab_id: str
    form: str | None = None  # the settings form whose settings this run uses
    hint: str = ""
    submit: str = "Train"
    preview: bool = False  # the settings are the form's opening values, not yet submitted
    from_link: bool = False  # ... and some of them came from the link
    shipped: bool = False  # a result came from the shipped defaults
    stop_drawn: bool = False


_RUN: ContextVar[LabRun | None] = ContextVar("natgrad_lab_run", default=None)


def render_lab(lab: Lab, render: Callable[[Lab], None]) -> None:
    """Draw one lab (inside its fragment): its errors in words, never a traceback; the
    settings from the link that could not be used, and where shipped results came from."""
    note = st.empty()
    before = _url_params()
    current = LabRun(lab.id)
    token = _RUN.set(current)
    try:
        render(lab)
    except NotReady:
        st.info(("These settings came from the link. " if current.from_link else "") + current.hint,
                icon=":material/play_circle:")
    except RunStopped:
        st.info(f"Stopped. Nothing was kept; press **{current.submit}** to run again.", icon=":material/stop_circle:")
    except Exception as exc:  # a lab must never show a traceback to a learner
        log.exception("lab %s failed", lab.id)
        st.error(f"{LAB_STOPPED} ({type(exc).__name__}: {exc}). Try other settings; your progress is safe.")
    finally:
        _RUN.reset(token)
    if current.shipped:
        meta = _shipped()[1]
        st.caption(f"These results were computed in advance by `python scripts/lab_defaults.py` "
                   f"({meta.get('date', '?')}, {meta.get('device', '?')}); times are from that run.")
    problems = _url_problems(before, _url_params())
    dropped = st.session_state.get(DROPPED_LINK_VALUES, {})
    for k in [k for k in dropped if k in st.session_state]:  # a widget of this lab: its link value was taken out
        problems.append(f"`{k}` = {', '.join(dropped.pop(k))} is not a finite number")
    key = f"url-note:{lab.id}"
    if problems:
        st.session_state[key] = problems
    if shown := st.session_state.get(key):
        note.warning("Some settings in the link could not be used as given, so the lab uses its own there: "
                     + "; ".join(shown) + ".", icon=":material/link_off:")


def _url_params() -> dict[str, list[str]]:
    return {k: st.query_params.get_all(k) for k in st.query_params}


def _spellings(value: Any) -> set[str]:
    """How a widget's value may be written in a link."""
    out = {str(value), repr(value)}
    if isinstance(value, bool):
        out |= {str(value).lower()}
    elif isinstance(value, (int, float)):
        out |= {f"{value:g}"}
    return out


def _url_problems(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """Link settings this lab's widgets rejected (Streamlit drops them from the URL) or adjusted."""
    problems = []
    for k, raw in before.items():
        if k not in st.session_state:
            continue  # not a widget of this lab
        value = st.session_state[k]
        if k in after:
            if after[k] != raw:
                problems.append(f"`{k}` = {', '.join(raw)} was adjusted to {', '.join(after[k])}")
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if len(values) == len(raw) and all(r in _spellings(v) for r, v in zip(raw, values, strict=True)):
            continue  # the default, written out: Streamlit drops it from the URL as redundant
        problems.append(f"`{k}` = {', '.join(raw)} is not one of its choices (now {value})")
    return problems


HINT = "Choose settings and press **{submit}**. Runs are shared: the same settings come back at once."


def settings_form(key: str, draw: Callable[[], dict], submit: str = "Train",
                  validate: Callable[[dict], str | None] | None = None,
                  hint: str = HINT) -> tuple[dict | None, bool]:
    """A lab's settings form, remembered for the session.

    ``draw()`` lays out the form's widgets (each bound to the query string under its
    key, so a link carries them) and returns their values as a dict. On submission
    the values are checked with ``validate`` (a message in words, or None when fine)
    and remembered under ``key``. Returns ``(settings, submitted)``: the last
    accepted settings of this session and whether this rerun submitted them. Before
    the first submission, inside a lab frame, the settings are the form's opening
    values; the lab then shows them only when their results are at hand (else
    :func:`run_all` and :func:`cached` raise :class:`NotReady` and ``hint`` is shown).
    """
    with st.form(key):
        values = draw()
        submitted = st.form_submit_button(submit, type="primary")
    current = _RUN.get()
    if submitted:
        problem = validate(values) if validate is not None else None
        if problem:
            st.warning(problem, icon=":material/warning:")
            return None, False
        st.session_state[f"{key}-last"] = values
        if current is not None:
            st.session_state.pop(f"url-note:{current.lab_id}", None)
    settings = st.session_state.get(f"{key}-last")
    if settings is not None:
        if current is not None:
            # a real run from here on, even after an earlier form of the same lab was a preview
            current.form, current.submit, current.preview = key, submit, False
        return settings, submitted
    if current is None:  # drawn outside a lab frame: nothing is shown before the first submission
        st.info(hint.format(submit=submit))
        return None, False
    problem = validate(values) if validate is not None else None
    if problem:
        st.warning(problem, icon=":material/warning:")
        return None, False
    current.form, current.submit, current.hint = key, submit, hint.format(submit=submit)
    current.preview = True
    current.from_link = any(k.startswith(f"{key}-") for k in st.query_params)
    return values, False


# ------------------------------------------------------------------------------ results
def _at_hand(key: Hashable) -> tuple[bool, Any]:
    """(True, result) when this server has it or it was shipped, else (False, None)."""
    registry = jobs()
    entries, _, served = _shipped()
    if registry.cached(key):
        try:
            value = registry.peek(key)
        except KeyError:  # dropped in between
            return False, None
        if key in served:
            _mark_shipped()
        return True, value
    if RECORDER is None:
        text = stored.key_text(key)
        if text in entries:
            try:
                value = stored.decode(entries[text])
            except Exception:  # noqa: BLE001 - a stale or damaged entry is recomputed, never fatal
                log.warning("shipped result for %s could not be read", text, exc_info=True)
                return False, None
            registry.put(key, value)
            served.add(key)
            _mark_shipped()
            return True, value
    return False, None


def _mark_shipped() -> None:
    if (current := _RUN.get()) is not None:
        current.shipped = True


def ready(key: Hashable) -> bool:
    """Whether the result for ``key`` would come back at once."""
    return _at_hand(key)[0]


def _missed(current: LabRun, keys: list[Hashable]) -> None:
    if not current.from_link:
        MISSED.update(stored.key_text(k) for k in keys)


def _record(key: Hashable, value: Any) -> None:
    """While scripts/lab_defaults.py opens the pages (nothing set, nothing pressed), everything a lab
    asks for is what it shows at its opening settings."""
    if RECORDER is not None and _RUN.get() is not None:
        RECORDER[stored.key_text(key)] = value


def obtain(items: list[tuple[Hashable, str, Callable[..., Any]]]) -> list[Any]:
    """The results for ``(key, label, compute)`` items, in order: at hand, or computed by the
    server's shared jobs while this learner watches (see the module docstring)."""
    out: dict[int, Any] = {}
    missing = []
    for i, (key, label, compute) in enumerate(items):
        hit, value = _at_hand(key)
        if hit:
            out[i] = value
        else:
            missing.append((i, key, label, compute))
    current = _RUN.get()
    if missing and current is not None and current.preview and RECORDER is None:
        _missed(current, [key for _, key, _, _ in missing])
        raise NotReady
    if missing:
        registry = jobs()
        handles = [(i, registry.submit(key, compute, label)) for i, key, label, compute in missing]
        try:
            _wait(registry, [(label, h) for (_, _, label, _), (_, h) in zip(missing, handles, strict=True)], current)
        finally:
            for _, h in handles:
                registry.leave(h)
        for i, h in handles:
            try:
                out[i] = h.outcome()
            except Cancelled as exc:
                raise RunStopped from exc
    for i, (key, _, _) in enumerate(items):
        _record(key, out[i])
    return [out[i] for i in range(len(items))]


def _wait(registry: Jobs, handles: list[tuple[str, Job]], current: LabRun | None) -> None:
    """Show the jobs' progress (or their place in the queue) and a Stop button until all have finished."""
    holder = st.empty()
    with holder.container():
        bar = st.progress(0.0, text="Starting ...")
        detail = st.empty()
        pressed = False
        if current is not None and current.form is not None and not current.stop_drawn:
            current.stop_drawn = True
            pressed = st.button("Stop", key=f"{current.lab_id}-stop", icon=":material/stop_circle:",
                                help="Stop waiting. The run ends unless another learner waits for it too.")
    if pressed:
        holder.empty()
        st.session_state.pop(f"{current.form}-last", None)  # back to the opening settings
        raise RunStopped
    started = time.monotonic()
    poll = True
    while True:
        fraction = sum(1.0 if h.finished else h.fraction for _, h in handles) / len(handles)
        lines, queued = [], False
        for label, h in handles:
            if h.finished:
                continue
            place = registry.position(h)
            others = h.waiters - 1
            shared = f" (shared with {others} other learner{'s' * (others != 1)})" if others > 0 else ""
            if place:
                queued = True
                lines.append(f"**{label}**: waiting, number {place} in the queue{shared}")
            else:
                lines.append(f"**{label}**: {h.text or 'starting'}{shared}")
        text = "Queued" if queued and not any(h.fraction for _, h in handles) else "Training"
        bar.progress(fraction, text=f"{text} ... {fraction:.0%}")
        if lines:
            detail.caption(" · ".join(lines) + (f". The server trains {registry.workers} at a time, first come "
                                                "first served." if queued else ""))
        pending = [h for _, h in handles if not h.finished]
        if not pending:
            break
        pending[0].wait(0.25)  # also where Streamlit's Stop or a new page run interrupts (at the next st call)
        if poll and time.monotonic() - started > POLL_S:
            try:  # inside a fragment rerun: rerun it, so that a click (Stop, new settings) gets in
                st.rerun(scope="fragment")
            except StreamlitAPIException:  # a full page run cannot rerun one fragment: wait here
                poll = False
    holder.empty()


def _train(spec: Spec) -> Callable[[Callable[[float, str], None]], Trajectory]:
    def compute(progress: Callable[[float, str], None]) -> Trajectory:
        return run(spec, progress=lambda done, total: progress(done / total, f"step {done}/{total}"))

    return compute


def run_all(specs: dict[str, Spec]) -> dict[str, Trajectory]:
    """``natgrad.experiments.run`` of every spec, all submitted at once (see :func:`obtain`)."""
    results = obtain([(spec, label, _train(spec)) for label, spec in specs.items()])
    return dict(zip(specs, results, strict=True))


def run_cached(spec: Spec, label: str) -> Trajectory:
    """``natgrad.experiments.run`` once per distinct spec, shared by all sessions."""
    return run_all({label: spec})[label]


def cached(key: Hashable, compute: Callable[..., T], label: str = "Computing", instant: bool = False) -> T:
    """``compute()`` (or ``compute(progress)``, reporting ``progress(fraction, text)``) once per
    distinct ``key``, shared by all sessions. ``compute`` runs in a worker thread, so it must not
    call Streamlit. ``instant``: work so small that it is done here and now, even before the
    first submission. An exception is not kept: the next call tries again."""
    if instant:
        hit, value = _at_hand(key)
        if not hit:
            value = compute()
            jobs().put(key, value)
        return value
    return obtain([(key, label, compute)])[0]


def cached_here(key: Hashable, compute: Callable[[], T]) -> T:
    """Like :func:`cached`, but ``compute()`` runs in this session's own thread (it may draw,
    e.g. a progress bar that ends the work with the page) and is not queued."""
    hit, value = _at_hand(key)
    if hit:
        _record(key, value)
        return value
    current = _RUN.get()
    if current is not None and current.preview and RECORDER is None:
        _missed(current, [key])
        raise NotReady
    value = compute()
    jobs().put(key, value)
    _record(key, value)
    return value


def lazy_tabs(key: str, views: dict[str, Callable[[], None]]) -> None:
    """Tabs named by ``views`` whose open tab alone is drawn (``views[label]()`` inside it).
    Switching tabs reruns the lab (its fragment); the open tab is in the URL under ``key``. For
    views that are expensive to draw in the browser (WebGL, large heatmaps)."""
    for tab, draw in zip(st.tabs(list(views), key=key, on_change="rerun", bind="query-params"), views.values(),
                         strict=True):
        if tab.open:
            with tab:
                draw()


def report_status(label: str, traj: Trajectory) -> None:
    """Say in words how a run ended when it did not simply finish."""
    if traj.status == "diverged":
        st.warning(f"**{label}**: {traj.message}", icon=":material/trending_up:")
    elif traj.status in ("error", "stopped"):
        st.warning(f"**{label}**: {traj.message}", icon=":material/error:")


def ms_per_step(traj: Trajectory) -> float:
    return 1e3 * traj.seconds[-1] / len(traj.seconds) if traj.seconds else math.nan


def show_runs(key: str, trajs: dict[str, Trajectory], settings: dict | None = None) -> None:
    """How each run ended (in words when not simply finished), loss against steps and
    against seconds in two tabs on shared axes (optionally over the learner's previous
    run), and final loss with ms/step per run."""
    for label, t in trajs.items():
        report_status(label, t)
    shown = with_previous(key, trajs, settings)
    lazy_tabs(f"{key}-axis", {"loss vs steps": lambda: chart(loss_figure(shown, "step"), f"{key}-fig-steps"),
                              "loss vs seconds": lambda: chart(loss_figure(shown, "seconds"), f"{key}-fig-secs")})
    run_metrics(trajs, ms_per_step)


def bench_results(name: str, title: str, report: Callable[[dict], str]) -> None:
    """An expander with the stored results of ``python -m natgrad.bench NAME`` (its
    printed report and the tuned loss curves), or how to produce them; drawn only when
    opened (opening it reruns the lab)."""
    box = st.expander(f"Benchmark: {title} (python -m natgrad.bench {name})", key=f"bench-{name}-open",
                      on_change="rerun")
    if not box.open:
        return
    result = load_bench(BENCH_DIR / f"{name}.json")
    with box:
        if result is None:
            st.info(f"No benchmark results are stored yet. Run `python -m natgrad.bench {name} "
                    f"--out docs/bench/{name}.json`.")
            return
        try:
            text = report(result)
            curves = result.get("curves", {})
            trajs = {f"{k} ({hparams_text(v['hparams'], TUNED)})": SimpleNamespace(
                step=v["step"], seconds=v["seconds"], loss=v["loss"], status="ok") for k, v in curves.items()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a file older than its report
            log.warning("stored benchmark %s does not fit its report", name, exc_info=True)
            st.warning(f"The stored results in `docs/bench/{name}.json` do not fit this version of the benchmark "
                       f"({type(exc).__name__}: {exc}). Run `python -m natgrad.bench {name} --out "
                       f"docs/bench/{name}.json` again.", icon=":material/warning:")
            return
        st.code(text, language=None)
        if trajs:
            chart(loss_figure(trajs, "seconds", "tuned runs from the benchmark"), f"bench-{name}")
