"""Lab of lesson 1: Adam's v_t next to the diagonal Fisher, one layer's full Fisher, and the
power -1/2 against -1 on a two-parameter toy."""

from __future__ import annotations

import numpy as np
import streamlit as st

from course.lessons import Lab
from natgrad.labs.adam_fisher import adam_fisher_snapshot
from natgrad.tasks.toy2d import linear_regression_fisher, power_path, quadratic_loss
from natgrad.viz import contour_paths_figure, diagonal_scatter_figure, fisher_panels
from views.labs.common import cached, lazy_tabs, settings_form
from views.labs.figures import chart

STEPS = [0, 10, 50, 200, 800]
BATCHES = [1, 8, 64, 512, "all 1797"]
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
SCALES = [0.1, 0.3, 1.0, 3.0, 10.0]
CORRELATIONS = [-0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9]
TOY_LRS = [0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 1.5]
TOY_START, TOY_TARGET = (-2.0, 2.5), (1.0, -0.5)


def _snapshot(s: dict):
    batch = None if s["batch"] == BATCHES[-1] else int(s["batch"])

    def compute(progress):
        return adam_fisher_snapshot(s["step"], batch, s["lr"], progress=progress)

    return cached(("adam-fisher", s["step"], batch, s["lr"]), compute, label="Adam and the two Fisher diagonals")


SCATTER_TAB, BLOCK_TAB = "v̂ against the Fisher diagonals", "the output layer's full Fisher"


def _fisher_part() -> None:
    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(step=c1.select_slider("Adam steps before comparing", STEPS, value=200, key="af-step", bind="query-params",
                                          help="Adam trains for this many steps; then its v̂ and the two Fisher "
                                               "diagonals are compared at the weights it reached."),
                    batch=c2.select_slider("mini-batch size B", BATCHES, value=64, key="af-batch", bind="query-params",
                                           help="How many digits each of Adam's gradients averages. Small batches "
                                                "make v̂ a noisier estimate."),
                    lr=c3.select_slider("Adam learning rate", LRS, value=1e-2, key="af-lr", bind="query-params",
                                        help="Adam's step size (betas 0.9, 0.999)."))

    s = settings_form("af", draw, submit="Train and compare")[0]
    if s is None:
        return
    snap = _snapshot(s)
    # two views of the same weights, drawn only when open (switching reruns this lab alone): the two
    # 330 x 330 heatmaps took about half a second of the page's drawing in the browser
    lazy_tabs("af-view", {SCATTER_TAB: lambda: _scatter_view(snap), BLOCK_TAB: lambda: _block_view(snap)})


def _scatter_view(snap) -> None:
    bounds = [0, *snap.boundaries, len(snap.v)]
    groups = [f"layer {i + 1}" for i in range(len(bounds) - 1) for _ in range(bounds[i + 1] - bounds[i])]
    c = snap.correlations
    B = 1797 if snap.batch_size is None else snap.batch_size
    if snap.step == 0:
        st.info("At step 0 Adam has seen no gradient, so v̂ is zero everywhere: pick a later step to see the "
                "scatter. The Fisher diagonals are already defined at the initial weights.")
    else:
        chart(diagonal_scatter_figure(
            snap.v, {"empirical Fisher": snap.empirical, "true Fisher": snap.true}, groups,
            {"empirical Fisher": c["v vs empirical Fisher"], "true Fisher": c["v vs true Fisher"]},
            batch_size=B), "af-scatter")
    ratio = np.median(snap.v[snap.empirical > 0] / snap.empirical[snap.empirical > 0]) if snap.step else float("nan")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("loss on all digits", f"{snap.full_loss:.3f}")
    m2.metric("median v̂ / diag F̃", f"{ratio:.3g}", help="F̃: the empirical Fisher (observed labels)")
    m3.metric("1 / B", f"{1 / B:.3g}")
    m4.metric("log-log corr., empirical vs true Fisher", f"{c['empirical vs true Fisher']:.3f}")
    st.caption(
        "Each point is one of the 2410 parameters of the digits classifier (64-32-10, tanh). v̂ is Adam's "
        "bias-corrected second moment after the chosen step; the two Fisher diagonals are computed exactly at "
        "the same weights over all 1797 digits: the empirical one with the observed labels, the true one as an "
        "expectation over labels drawn from the model. Dashed: y = x. Dotted: y = x/B, where squared batch means "
        "of pure noise would sit. Correlations are of the logarithms."
    )


def _block_view(snap) -> None:
    F = snap.layer_fisher
    diag = np.diag(np.diag(F))
    off = float(np.linalg.norm(F - diag) / np.linalg.norm(F))
    st.markdown(f"**The output layer's full Fisher ({F.shape[0]} x {F.shape[0]}) next to its diagonal**")
    n_weights = F.shape[0] - 10  # the 10 x 32 weights, then the 10 biases
    panels = fisher_panels({"true Fisher of the output layer": F, "its diagonal": diag}, {"its diagonal": off},
                           boundaries=[n_weights], layer_names=["weights", "biases"])
    for col, key, fig, m in zip(st.columns(2), ("af-layer", "af-layer-diag"), panels, (F, diag), strict=True):
        chart(fig, key, col, matrix=m)
    st.caption(
        f"Rows and columns: the 10 x 32 weights (row by row), then the 10 biases. Keeping only the diagonal "
        f"drops {off:.0%} of this block's Frobenius norm: the correlations between weights that a diagonal "
        "method such as Adam never sees. The repeating pattern is the Kronecker-like structure K-FAC exploits "
        "(lesson 2)."
    )


def _power_part() -> None:
    st.markdown(
        "**Power −1/2 against −1.** A two-weight linear regression $y = w^\\top x + \\varepsilon$ with unit "
        "Gaussian noise: its Fisher is the second-moment matrix $F = \\mathbb{E}[xx^\\top]$ of the inputs and "
        "equals the Hessian of the loss. Both paths precondition the gradient with the *same* exact diagonal "
        "$\\operatorname{diag}(F)$; one multiplies by $\\operatorname{diag}(F)^{-1}$ (a diagonal natural gradient), "
        "the other by $\\operatorname{diag}(F)^{-1/2}$ (Adam's power). The full natural gradient $F^{-1}$ is drawn "
        "for reference."
    )

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(scale=c1.select_slider("spread of the second input", SCALES, value=0.3, key="pw-scale", bind="query-params",
                                           help="The standard deviation of the second input (the first has 1): "
                                                "how much more or less curved the loss is along w₂."),
                    corr=c2.select_slider("correlation of the inputs", CORRELATIONS, value=0.0, key="pw-corr", bind="query-params",
                                          help="How strongly the two inputs move together: the off-diagonal "
                                               "curvature a diagonal method cannot see."),
                    lr=c3.select_slider("learning rate", TOY_LRS, value=0.3, key="pw-lr", bind="query-params",
                                        help="The same step size for the three paths."),
                    steps=c3.select_slider("steps", [10, 20, 50, 100], value=20, key="pw-steps", bind="query-params",
                                           help="How many steps each path takes."))

    s = settings_form("pw", draw, submit="Draw the paths")[0]
    if s is None:
        return

    def compute():
        F = linear_regression_fisher(s["scale"], s["corr"])
        paths = {name: power_path(F, p, s["lr"], s["steps"], TOY_START, TOY_TARGET)
                 for name, p in (("power −1 (diagonal natural gradient)", -1.0), ("power −1/2 (Adam's power)", -0.5),
                                 ("full natural gradient Σ⁻¹", None))}
        return F, paths

    F, paths = cached(("power-paths", s["scale"], s["corr"], s["lr"], s["steps"]), compute, instant=True)
    pts = np.concatenate([p for p in paths.values() if len(p)] + [np.array([TOY_START, TOY_TARGET])])
    lo, hi = pts.min(0) - 0.5, pts.max(0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120)
    W1, W2 = np.meshgrid(xs, ys)
    fig = contour_paths_figure(xs, ys, quadratic_loss(F, TOY_TARGET, W1, W2), paths, marks={"minimum": TOY_TARGET})
    chart(fig, "pw-fig")
    rows = []
    for label, p in paths.items():
        final = float(quadratic_loss(F, TOY_TARGET, p[-1, 0], p[-1, 1]))
        rows.append({"path": label, "steps taken": len(p) - 1, "final loss": f"{final:.3g}",
                     "status": "ok" if len(p) == s["steps"] + 1 else "left the plot (diverged)"})
    st.table(rows, hide_index=True)
    st.caption(
        "With uncorrelated inputs the −1 path is a straight line to the minimum whatever the scale: dividing by "
        "the curvature undoes it. The −1/2 path bends, and its stable learning rate depends on the scale of the "
        "inputs; change the scale and watch only the −1/2 path change. Correlated inputs bend the −1 path too: "
        "that is the off-diagonal curvature a diagonal method discards."
    )


def adam_vs_fisher(lab: Lab) -> None:
    st.markdown(
        "Adam trains the digits classifier on mini-batches. At the step you choose, its second moment "
        "$\\hat v_t$ is set against the diagonal of the empirical Fisher (observed labels) and of the true "
        "Fisher (labels sampled from the model), parameter by parameter."
    )
    _fisher_part()
    st.divider()
    _power_part()
