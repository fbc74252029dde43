"""The optimizer race (lesson 8): any registered optimizers that apply to the chosen task,
each from its preset with its own learning rate, run side by side."""

from __future__ import annotations

import math

import streamlit as st

from course.lessons import Lab
from natgrad.bench import soap_muon
from natgrad.experiments import TASKS
from natgrad.race import applicable, break_even, label, learning_rate, race_specs, seconds_per_step
from natgrad.viz.race import race_figure, step_time_figure
from views.labs.common import bench_results, cached, device, report_status, run_all, settings_form
from views.labs.figures import chart, with_previous
from views.labs.kfac import LOG_CHOICES

MAX_RACERS = 6
STEP_CHOICES = [25, 50, 100, 200, 400, 800]
BATCHES = ["full", 512, 256, 64]
FIRST_PICKS = ("adam", "shampoo", "soap", "muon", "kfac", "sophia")
TASK_NAMES = {"digits-autoencoder": "digits autoencoder (64-128-64-32-8-32-64-128-64)",
              "digits-classifier": "digits classifier (64-32-10)", "digits-cnn": "digits CNN (two 3x3 convolutions)",
              "kron-quadratic": "Kronecker quadratic (16 x 16)",
              "lesson-chars": "character transformer (on this course's lesson text)",
              "poincare-tree": "tree embedded in the Poincaré disk",
              "simplex-kl": "distribution on the probability simplex (KL fit)",
              "sophia-toy": "two-parameter toy with negative curvature (Sophia lesson)",
              "stiefel-pca": "top-4 principal directions on the Stiefel manifold"}


def _lr_choices(preset: float) -> list[float]:
    return sorted(set(LOG_CHOICES) | {preset})


def _applicable(task: str) -> dict[str, str | None]:
    return cached(("race-applicable", task, device()), lambda: applicable(task, device=device()), instant=True)


def _pick() -> tuple[str, list[str]]:
    """Task and optimizers, outside the form so the learning-rate sliders follow the choice."""
    task = st.selectbox("task", list(TASKS), key="race-task", bind="query-params", format_func=lambda t: TASK_NAMES.get(t, t),
                        help="The model and data every racer trains, from the same starting weights.")
    status = _applicable(task)
    ok = [n for n, why in status.items() if why is None]
    left_out = {n: why for n, why in status.items() if why is not None}
    default = ([n for n in FIRST_PICKS if n in ok] or ok)[:4]  # (manifold tasks take none of the first picks)
    chosen = st.multiselect(f"optimizers (up to {MAX_RACERS})", ok, default=default, max_selections=MAX_RACERS,
                            key=f"race-opts-{task}", bind="query-params", format_func=label,
                            help="Every optimizer that can train this task with its preset is offered.")
    if left_out:
        st.caption("Not offered for this task: " + "; ".join(f"**{label(n)}**: {why}" for n, why in left_out.items()))
    return task, chosen


def _settings(task: str, chosen: list[str]) -> dict | None:
    def draw() -> dict:
        lrs = {}
        cols = st.columns(3)
        for i, name in enumerate(chosen):
            preset = learning_rate(name)
            if preset is None:
                cols[i % 3].caption(f"**{label(name)}** chooses its own step size (preset)")
                lrs[name] = None
            else:
                lrs[name] = cols[i % 3].select_slider(f"{label(name)} learning rate", _lr_choices(preset),
                                                      value=preset, key=f"race-lr-{name}", bind="query-params",
                                                      help=f"{label(name)}'s step size; it starts at the course's "
                                                           f"preset, {preset:g}.")
        c1, c2 = st.columns(2)
        return dict(task=task, lrs=lrs,
                    steps=c1.select_slider("steps", STEP_CHOICES, value=100, key="race-steps", bind="query-params",
                                           help="How many updates every racer makes."),
                    batch=c2.select_slider("batch size", BATCHES, value="full", key="race-batch", bind="query-params",
                                           help="How many examples each gradient averages; \"full\": the whole "
                                                "data set every step (no noise)."))

    def validate(s: dict) -> str | None:
        return None if s["lrs"] else "Choose at least one optimizer."

    return settings_form("race", draw, submit="Race", validate=validate)[0]


def _break_even_rows(trajs: dict) -> list[dict]:
    base_name = "Adam" if "Adam" in trajs else next(iter(trajs))
    base = trajs[base_name]
    rows = []
    for name, t in trajs.items():
        b = break_even(base, t)
        ms = 1e3 * seconds_per_step(t)
        if name == base_name:
            when = "(the baseline)"
        elif not math.isfinite(b["cost_ratio"]):
            when = "no steps"
        elif b["step"] is None:
            when = "not within the run"
        else:
            when = (f"step {b['step']} ({b['seconds']:.2f} s): loss {b['loss']:.3g}, which {base_name} reaches "
                    + (f"at step {b['base_steps']}" if b["base_steps"] is not None else "never in its run"))
        rows.append({"optimizer": name, "final loss": f"{t.final_loss:.4g}", "ms per step": f"{ms:.1f}",
                     f"step cost / {base_name}'s": f"{b['cost_ratio']:.2f}x" if math.isfinite(b["cost_ratio"]) else "n/a",
                     f"ahead of {base_name} in wall-clock from": when})
    return rows


def optimizer_race(lab: Lab) -> None:
    st.markdown(
        "Every optimizer starts from the same weights with its preset (the settings the course uses everywhere) "
        "and the learning rate you give it. Curvature methods take dearer steps; the table says from which step "
        "on the dearer steps have paid for themselves: the first step at which a run's loss is one the baseline "
        "reaches only later in wall-clock time. Timings are this machine's, with one CPU thread per run "
        "(or the GPU when there is one), measured one run after another."
    )
    bench_results("soap-muon", "SOAP and Muon vs tuned Adam, SOAP's step time vs heavyball's", soap_muon.report)
    task, chosen = _pick()
    s = _settings(task, chosen)
    if s is None:
        return
    batch = None if s["batch"] == "full" else int(s["batch"])
    specs = race_specs(s["task"], s["lrs"], s["steps"], batch_size=batch, device=device())
    trajs = run_all(specs)
    for name, t in trajs.items():
        report_status(name, t)
    trajs = {name: t for name, t in trajs.items() if t.loss}
    if not trajs:
        return
    described = {"task": TASK_NAMES.get(s["task"], s["task"]), "steps": s["steps"], "batch": s["batch"]}
    described |= {f"{n} learning rate": lr for n, lr in s["lrs"].items() if lr is not None}
    shown = with_previous("race", trajs, described)
    chart(race_figure(shown, TASK_NAMES.get(s["task"], s["task"])), "race-fig")
    c1, c2 = st.columns([1, 2])
    chart(step_time_figure({n: 1e3 * seconds_per_step(t) for n, t in trajs.items()}), "race-times", c1)
    c2.table(_break_even_rows(trajs), hide_index=True)
    if batch is not None:
        st.caption("With mini-batches the curves are the loss on all digits, evaluated about 50 times per run "
                   "(evaluation time not counted).")
