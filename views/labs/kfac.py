"""Labs of the K-FAC lesson: Fisher blocks, training, cost (the damping lesson reuses the training lab)."""

from __future__ import annotations

import streamlit as st

from course.lessons import Lab
from natgrad import costs
from natgrad.bench import kfac as kfac_bench
from natgrad.experiments import Spec
from natgrad.presets import KFAC_BASE
from natgrad.snapshots import fisher_snapshot
from natgrad.viz import cost_figure, fisher_figure, traces_figure
from views.labs.common import bench_results, device, run_cached, settings_form, show_runs

LOG_CHOICES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]


@st.cache_data(show_spinner="Computing the exact Fisher and its K-FAC approximation ...", max_entries=16)
def _snapshot(step: int):
    return fisher_snapshot(train_steps=step)


def fisher_blocks(lab: Lab) -> None:
    st.markdown(
        "A 16-12-10-10 tanh network classifies the digits (pooled to 4x4 pixels; 444 parameters). "
        "Left: its exact Fisher (true Fisher, the expectation over the model's own predictions, on 512 digits). "
        "Middle: the same matrix with the blocks *between* layers set to zero. Right: K-FAC, one Kronecker "
        "product $A\\otimes G$ per layer. Thin lines separate the three layers."
    )
    step = st.select_slider("Measure after this many Adam training steps", [0, 25, 50, 100, 200, 400, 800],
                            value=100, key="fb-step")
    snap = _snapshot(step)
    st.plotly_chart(fisher_figure(snap.matrices, snap.errors, snap.boundaries), key="fb-fig")
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


def _settings(key: str, with_baselines: bool) -> dict | None:
    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        out = dict(
            steps=c1.select_slider("steps", [50, 100, 200, 400, 800], value=200, key=f"{key}-steps"),
            damping=c1.select_slider("K-FAC initial damping λ", LOG_CHOICES, value=1e-2, key=f"{key}-damp"),
            adaptive=c1.toggle("adaptive damping (Levenberg-Marquardt, every 5 steps)", value=True, key=f"{key}-lm"),
            rule=c2.radio("K-FAC step size", ["quadratic", "fixed", "kl_clip"], key=f"{key}-rule",
                          format_func={"quadratic": "quadratic model (M&G §7)", "fixed": "fixed learning rate",
                                       "kl_clip": "fixed, with KL clipping"}.get),
            kfac_lr=c2.select_slider("K-FAC learning rate (fixed rules)", LOG_CHOICES, value=1e-1, key=f"{key}-klr"),
            inv=c2.select_slider("inverse update interval", [1, 2, 5, 10, 20, 50], value=5, key=f"{key}-inv"),
            adam_lr=None, sgd_lr=None)
        if with_baselines:
            out["adam_lr"] = c3.select_slider("Adam learning rate", LOG_CHOICES, value=1e-2, key=f"{key}-alr")
            out["sgd_lr"] = c3.select_slider("SGD+momentum learning rate (momentum 0.9)", LOG_CHOICES, value=1e-2,
                                             key=f"{key}-slr")
        return out

    return settings_form(key, draw)[0]


def _kfac_spec(s: dict) -> Spec:
    # the benchmark's settings, with the learner's choices on top
    hp = dict(KFAC_BASE, damping=s["damping"], adaptive_damping=s["adaptive"], step_size_rule=s["rule"],
              lr=s["kfac_lr"], inverse_update_steps=s["inv"], momentum=0.9 if s["rule"] == "quadratic" else 0.0)
    return Spec.make(hp, optimizer="kfac", steps=s["steps"], device=device())


def training(key: str, with_baselines: bool) -> None:
    settings = _settings(key, with_baselines)
    if settings is None:
        return
    runs = {"K-FAC": _kfac_spec(settings)}
    if with_baselines:
        runs["Adam"] = Spec.make({"lr": settings["adam_lr"]}, optimizer="adam", steps=settings["steps"], device=device())
        runs["SGD+momentum"] = Spec.make({"lr": settings["sgd_lr"], "momentum": 0.9}, optimizer="sgd",
                                         steps=settings["steps"], device=device())
    trajs = {label: run_cached(spec, label) for label, spec in runs.items()}
    show_runs(key, trajs)
    k = trajs["K-FAC"]
    shown = {name: k.extras[name] for name in ("damping", "rho", "alpha", "step_norm") if name in k.extras}
    if shown:
        st.markdown("**K-FAC's damping λ, reduction ratio ρ (dotted: the 1/4 and 3/4 thresholds), step size α "
                    "and step norm**")
        st.plotly_chart(traces_figure(k.step, shown, log_y=("damping", "step_norm")), key=f"{key}-traces")


def kfac_training(lab: Lab) -> None:
    st.markdown(
        "The digits autoencoder (64-128-64-32-8-32-64-128-64, tanh; the scaled-down version of the deep "
        "autoencoders Martens & Grosse used), full batch, trained by our K-FAC, Adam and SGD with momentum."
    )
    training("kt", with_baselines=True)
    bench_results("kfac", "K-FAC vs tuned Adam", kfac_bench.report)


def kfac_cost(lab: Lab) -> None:
    c1, c2, c3 = st.columns(3)
    m = int(c1.number_input("outputs m", min_value=1, max_value=1_000_000, value=4096, step=1, key="kc-m"))
    n = int(c2.number_input("inputs n", min_value=1, max_value=1_000_000, value=4096, step=1, key="kc-n"))
    dtype = c3.selectbox("dtype", list(costs.DTYPE_BYTES), index=1, key="kc-dtype")
    rows = []
    for c in costs.layer_costs(m, n, bias=True, dtype=dtype):
        rows.append({"name": c.name, "entries": c.entries, "memory": costs.human_bytes(c.bytes),
                     "bytes": c.bytes, "bytes_text": costs.human_bytes(c.bytes),
                     "invert FLOPs": f"{c.invert_flops:.3g}", "invert": c.invert_flops,
                     "apply FLOPs": f"{c.apply_flops:.3g}", "apply": c.apply_flops})
    st.dataframe([{k: r[k] for k in ("name", "entries", "memory", "invert FLOPs", "apply FLOPs")} for r in rows],
                 hide_index=True)
    f1, f2 = st.columns(2)
    f1.plotly_chart(cost_figure(rows, "bytes", "memory (bytes, log scale)"), key="kc-mem")
    f2.plotly_chart(cost_figure(rows, "invert", "FLOPs to invert (log scale)"), key="kc-flops")
    st.caption("Layer with bias: K-FAC's A is (n+1)x(n+1). Eigendecomposition counted as 9d³ FLOPs.")
    if st.button("Measure inversion (eigendecomposition) times on this device", key="kc-measure"):
        dims = {"A (n+1)": n + 1, "G (m)": m, "exact block (m(n+1))": m * (n + 1)}
        out = []
        for name, d in dims.items():
            secs = costs.measure_eigh_seconds(d, device=device(), max_dim=2048)
            out.append({"matrix": name, "size": d,
                        "seconds": "too large to try here (> 2048)" if secs is None else f"{secs:.4f}"})
        st.dataframe(out, hide_index=True)
