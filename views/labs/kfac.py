"""Labs of the K-FAC lesson: Fisher blocks, training, cost (the damping lesson reuses the training lab)."""

from __future__ import annotations

import dataclasses

import numpy as np
import streamlit as st

from course.lessons import Lab
from natgrad import costs
from natgrad.bench import kfac as kfac_bench
from natgrad.experiments import Spec
from natgrad.presets import KFAC_TASK_PRESETS
from natgrad.snapshots import fisher_snapshot
from natgrad.viz import costs_figure, fisher_panels, layer_cost_figure, safeguard_counts, safeguard_trace_figure
from views.labs.common import bench_results, cached, device, run_all, settings_form, show_runs
from views.labs.figures import chart

LOG_CHOICES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]


def _snapshot(step: int):
    def compute():
        snap = fisher_snapshot(train_steps=step)
        # only drawn: float32 is plenty for the heatmaps (the errors were computed in float64)
        return dataclasses.replace(snap, matrices={k: m.astype(np.float32) for k, m in snap.matrices.items()})

    return cached(("fisher-snapshot", step), compute, label="The exact Fisher and its K-FAC approximation")


_KEYS = {"exact Fisher": "exact", "block diagonal": "blocks", "K-FAC": "kfac"}


def fisher_blocks(lab: Lab) -> None:
    st.markdown(
        "A 16-12-10-10 tanh network classifies the digits (pooled to 4x4 pixels; 444 parameters). "
        "Left: its exact Fisher (true Fisher, the expectation over the model's own predictions, on 512 digits). "
        "Middle: the same matrix with the blocks *between* layers set to zero. Right: K-FAC, one Kronecker "
        "product $A\\otimes\\Gamma$ per layer. Thin lines separate the three layers."
    )
    step = st.select_slider("Adam training steps before measuring", [0, 25, 50, 100, 200, 400, 800],
                            value=100, key="fb-step", bind="query-params",
                            help="The network is first trained with Adam for this many steps; the three matrices "
                                 "are then computed at the weights it reached. 0: the random starting weights.")
    snap = _snapshot(step)
    names = [f"layer {i + 1}" for i in range(len(snap.boundaries) + 1)]
    for col, (name, fig) in zip(st.columns(len(snap.matrices)), zip(snap.matrices, fisher_panels(
            snap.matrices, snap.errors, snap.boundaries, names), strict=True), strict=True):
        chart(fig, f"fb-fig-{_KEYS.get(name, name)}", col, matrix=snap.matrices[name])
    c1, c2, c3 = st.columns(3)
    c1.metric("training loss", f"{snap.train_loss:.3f}")
    c2.metric("block diagonal vs exact", f"{snap.errors['block diagonal']:.1%}")
    c3.metric("K-FAC vs exact", f"{snap.errors['K-FAC']:.1%}")
    extra = snap.errors["K-FAC"] - snap.errors["block diagonal"]
    st.caption(
        f"Relative Frobenius errors. Dropping the off-diagonal layer blocks costs {snap.errors['block diagonal']:.1%}; "
        f"the Kronecker factorisation of each remaining block adds {max(extra, 0):.1%} on top. "
        "Colours use a signed log scale so that small entries stay visible."
    )


TASK_CHOICES = {
    "digits-autoencoder": "autoencoder (64-128-64-32-8-32-64-128-64, tanh; squared error; full batch)",
    "digits-classifier": "MLP classifier (64-32-10, tanh; cross-entropy; full batch)",
    "digits-cnn": "CNN (two 3x3 convolutions, 2048 -> 10 head; cross-entropy; mini-batches of 256)",
}
BATCH = {"digits-cnn": 256}


RULES = {"quadratic": "quadratic model (M&G §7), bounded", "fixed": "fixed learning rate",
         "kl_clip": "fixed, with KL clipping"}


def _settings(key: str, with_baselines: bool) -> dict | None:
    # outside the form, so that the learning-rate slider below can follow it at once
    rule = st.radio("K-FAC step size", list(RULES), key=f"{key}-rule", bind="query-params", format_func=RULES.get, horizontal=True,
                    help="How K-FAC scales its direction: chosen each step by minimising its quadratic model of "
                         "the loss (Martens & Grosse 2015, §7), or a fixed learning rate (optionally shrunk so "
                         "that the step's predicted KL divergence stays small).")

    def draw() -> dict:
        task = st.radio("task", list(TASK_CHOICES), format_func=TASK_CHOICES.get, key=f"{key}-task", bind="query-params",
                        help="The model and data every optimizer trains, from the same starting weights.")
        c1, c2, c3 = st.columns(3)
        out = dict(
            task=task,
            steps=c1.select_slider("steps", [50, 100, 200, 400, 800], value=200, key=f"{key}-steps", bind="query-params",
                                   help="How many updates each optimizer makes. Longer runs take longer to train."),
            damping=c1.select_slider("K-FAC initial damping λ", LOG_CHOICES, value=1e-2, key=f"{key}-damp", bind="query-params",
                                     help="λ is added to the curvature before it is inverted: large λ makes short, "
                                          "gradient-like steps, small λ trusts the curvature. With adaptive damping "
                                          "this is only where λ starts."),
            adaptive=c1.toggle("adaptive damping (Levenberg-Marquardt)", value=True, key=f"{key}-lm", bind="query-params",
                               help="Every few steps, raise λ when the loss fell much less than predicted (ρ < 1/4) "
                                    "and lower it when the prediction was good (ρ > 3/4)."),
            reject=c1.toggle("reject steps that raise the loss", value=True, key=f"{key}-reject", bind="query-params",
                             help="Undo a step after which the loss went up, and raise the damping."),
            rule=rule,
            kfac_lr=c2.select_slider("K-FAC learning rate", LOG_CHOICES, value=1e-1, key=f"{key}-klr", bind="query-params",
                                     disabled=rule == "quadratic",
                                     help="The multiplier of K-FAC's direction under the fixed rules. The quadratic "
                                          "model chooses its own step size, so this slider is off then."),
            inv=c2.select_slider("inverse update interval", [1, 2, 5, 10, 20, 50], value=5, key=f"{key}-inv", bind="query-params",
                                 help="Recompute the inverses of K-FAC's factors every this many steps; in between, "
                                      "the last ones are reused. Larger is cheaper per step but staler."),
            adam_lr=None, sgd_lr=None)
        if rule == "quadratic":
            c2.caption("The learning rate is off: the quadratic model chooses the step size. Pick a fixed rule above "
                       "to set it.")
        if with_baselines:
            out["adam_lr"] = c3.select_slider("Adam learning rate", LOG_CHOICES, value=1e-2, key=f"{key}-alr", bind="query-params",
                                              help="Adam's step size (betas 0.9, 0.999).")
            out["sgd_lr"] = c3.select_slider("SGD learning rate", LOG_CHOICES, value=1e-2, key=f"{key}-slr", bind="query-params",
                                             help="The step size of SGD with momentum 0.9.")
        return out

    return settings_form(key, draw)[0]


def _spec(s: dict, optimizer: str, hparams: dict) -> Spec:
    task = s.get("task", "digits-autoencoder")
    return Spec.make(hparams, task=task, optimizer=optimizer, steps=s["steps"], device=device(),
                     batch_size=BATCH.get(task))


def _kfac_spec(s: dict) -> Spec:
    # the benchmark's settings for the task, with the learner's choices on top
    base = KFAC_TASK_PRESETS[s.get("task", "digits-autoencoder")]
    hp = dict(base, damping=s["damping"], adaptive_damping=s["adaptive"], step_size_rule=s["rule"],
              reject_steps=s.get("reject", True), lr=s["kfac_lr"] if s["rule"] != "quadratic" else 1.0,
              inverse_update_steps=s["inv"], momentum=0.9 if s["rule"] == "quadratic" else 0.0)
    return _spec(s, "kfac", hp)


def safeguard_traces(key: str, k) -> None:
    """K-FAC's damping, rho, step size and step norm, with its rejected steps and bound hits marked."""
    shown = {name: k.extras[name] for name in ("damping", "rho", "alpha", "step_norm") if name in k.extras}
    if not shown:
        return
    marks = {flag: k.extras.get(flag, []) for flag in ("rejected", "bound")}
    counts = safeguard_counts(marks)
    st.markdown("**K-FAC's damping λ, reduction ratio ρ (dotted: 0, 1/4 and 3/4), step size α and step norm**, "
                f"with its {counts['rejected']} rejected steps (×) and {counts['bound']} bound hits (▲)")
    chart(safeguard_trace_figure(k.step, shown, marks, log_y=("damping", "step_norm")), f"{key}-traces")


def training(key: str, with_baselines: bool) -> None:
    settings = _settings(key, with_baselines)
    if settings is None:
        return
    runs = {"K-FAC": _kfac_spec(settings)}
    if with_baselines:
        runs["Adam"] = _spec(settings, "adam", {"lr": settings["adam_lr"]})
        runs["SGD+momentum"] = _spec(settings, "sgd", {"lr": settings["sgd_lr"], "momentum": 0.9})
    trajs = run_all(runs)
    if settings.get("task") == "digits-cnn":
        st.caption("Mini-batches of 256: each point is the loss of that step's batch.")
    show_runs(key, trajs, _described(settings))
    safeguard_traces(key, trajs["K-FAC"])


def _described(s: dict) -> dict:
    """The settings as a learner reads them (for "changed since your previous run")."""
    out = {"task": s.get("task"), "steps": s["steps"], "damping λ": s["damping"],
           "adaptive damping": "on" if s["adaptive"] else "off", "step size": RULES[s["rule"]],
           "inverse interval": s["inv"]}
    if s["rule"] != "quadratic":
        out["K-FAC learning rate"] = s["kfac_lr"]
    if s.get("adam_lr") is not None:
        out |= {"Adam learning rate": s["adam_lr"], "SGD learning rate": s["sgd_lr"]}
    return out


def kfac_training(lab: Lab) -> None:
    st.markdown(
        "Three digits tasks: the autoencoder (the scaled-down version of the deep autoencoders Martens & Grosse "
        "used), an MLP classifier and a small CNN, trained by our K-FAC, Adam and SGD with momentum."
    )
    training("kt", with_baselines=True)
    bench_results("kfac", "K-FAC vs tuned Adam", kfac_bench.report)


def _count(n: int) -> str:
    """An exact count with thousands separators, or 3 significant digits past 10^15."""
    return f"{n:,}" if n < 10**15 else f"{n:.3g}"


MEASURE_MAX = 1024  # the largest eigendecomposition timed here; larger ones are extrapolated


def _measure(m: int, n: int) -> tuple[list, list, float]:
    dims = {"A (n+1)": n + 1, "G (m)": m, "exact block (m(n+1))": m * (n + 1)}
    with st.spinner(f"Timing eigendecompositions up to {MEASURE_MAX} x {MEASURE_MAX} ..."):
        return costs.inversion_times(dims, lambda d: costs.measure_eigh_seconds(d, device=device(),
                                                                               max_dim=MEASURE_MAX),
                                     max_dim=MEASURE_MAX)


def _inversion_table(m: int, n: int) -> None:
    rows, ladder, c = _measure(m, n)
    out = [{"matrix": r.name, "size d": f"{r.size:,}", "seconds": costs.human_seconds(r.seconds),
            "how": "measured" if r.measured else f"extrapolated: {c:.3g} · d³ s"} for r in rows]
    out += [{"matrix": r.name, "size d": f"{r.size:,}", "seconds": costs.human_seconds(r.seconds),
             "how": "measured (point of the fit)"} for r in ladder]
    st.table(out, hide_index=True)
    if any(not r.measured for r in rows):
        fitted = sorted({r.size for r in rows + ladder if r.measured})
        st.caption(f"Sizes above {MEASURE_MAX} are not run here: their times are **extrapolated** from "
                   f"t ≈ c·d³, fitted by least squares to the sizes measured on this device ({', '.join(map(str, fitted))}"
                   "; points below 256 are left out of the fit when there are enough larger ones, since fixed "
                   "overheads dominate them). An exact block that large would not fit in memory anyway.")


def kfac_cost(lab: Lab) -> None:
    c1, c2, c3 = st.columns(3)
    m = int(c1.number_input("outputs m", min_value=1, max_value=1_000_000, value=4096, step=1, key="kc-m", bind="query-params",
                            help="How many outputs the dense layer has (rows of its weight matrix W)."))
    n = int(c2.number_input("inputs n", min_value=1, max_value=1_000_000, value=4096, step=1, key="kc-n", bind="query-params",
                            help="How many inputs it has (columns of W); the bias adds one more to K-FAC's A."))
    dtype = c3.selectbox("dtype", list(costs.DTYPE_BYTES), index=1, key="kc-dtype", bind="query-params",
                         help="The number format the curvature is stored in: bytes per entry.")
    rows = []
    for c in costs.layer_costs(m, n, bias=True, dtype=dtype):
        rows.append({"name": c.name, "entries": c.entries, "memory": costs.human_bytes(c.bytes),
                     "bytes": c.bytes, "bytes_text": costs.human_bytes(c.bytes),
                     "invert FLOPs": f"{c.invert_flops:.3g}", "invert": c.invert_flops,
                     "apply FLOPs": f"{c.apply_flops:.3g}", "apply": c.apply_flops})
    # entries as text: the exact Fisher block of a 10^6 x 10^6 layer has ~10^24 of them, beyond a 64-bit column
    st.table([{k: _count(r[k]) if k == "entries" else r[k]
               for k in ("name", "entries", "memory", "invert FLOPs", "apply FLOPs")} for r in rows],
             hide_index=True)
    log = st.toggle("log scale", value=True, key="kc-log", bind="query-params",
                    help="A log scale shows sizes that differ a million-fold side by side but makes a 4x "
                         "difference look small; switch it off to compare bar heights directly.")
    chart(costs_figure(rows, {"bytes": "memory", "invert": "FLOPs to invert"}, f"curvature of one {m:,} x {n:,} layer",
                       log=log, axis_titles={"invert": "FLOPs"}), "kc-costs")
    st.caption("Layer with bias: K-FAC's A is (n+1)x(n+1). Eigendecomposition counted as 9d³ FLOPs. "
               "SI units: 1 GB = 10⁹ bytes.")
    if st.button("Measure inversion (eigendecomposition) times on this device", key="kc-measure",
                 help=f"Times eigendecompositions of random symmetric matrices up to {MEASURE_MAX} x {MEASURE_MAX} "
                      "on this machine and extrapolates larger sizes from the d³ law."):
        _inversion_table(m, n)
    model_costs(log)


@st.cache_data(show_spinner=False, max_entries=8)
def _model_costs(task: str) -> list[dict]:
    return [dict(layer=f"{c.name} ({c.kind})", A=c.a_dim, G=c.g_dim, rows=c.rows, inverted=" / ".join(c.methods),
                 memory=costs.human_bytes(c.bytes), statistics=c.statistics_per_step, inverses=c.inverses_per_step,
                 apply=c.apply_flops, per_step=c.per_step_flops) for c in costs.kfac_task_costs(task)]


def model_costs(log: bool = True) -> None:
    k = costs.kfac_schedule()
    st.markdown(f"**Per layer, for one of the course's models** (K-FAC's default schedule: statistics every "
                f"{k['factor_update_steps']} steps, eigendecompositions every {k['inverse_update_steps']}; factors "
                f"wider than {k['wide_factor_dim']} every {k['wide_update_steps']} steps: kept as the rows of their "
                "last batches and applied by the Woodbury identity while those rows are at most half the width, "
                "else as a Cholesky factor)")
    task = st.radio("model", list(TASK_CHOICES), format_func=TASK_CHOICES.get, key="kc-task", bind="query-params", horizontal=False,
                    help="One of the models the K-FAC training lab trains.")
    rows = _model_costs(task)
    st.table([{"layer": r["layer"], "A": r["A"], "G": r["G"], "rows per batch": r["rows"],
               "A / G inverted by": r["inverted"], "memory": r["memory"],
               "FLOPs per step": f"{r['per_step']:.3g}"} for r in rows], hide_index=True)
    chart(layer_cost_figure(rows, log=log), "kc-layers")
    top = max(rows, key=lambda r: r["per_step"])
    st.caption(f"The most expensive layer is {top['layer']}: {top['per_step'] / sum(r['per_step'] for r in rows):.0%} "
               "of K-FAC's FLOPs per step beyond the forward and backward pass.")
