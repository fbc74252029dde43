"""Labs of lesson 8 about directions: every optimizer's step against the natural gradient
(the preconditioner lab) and Muon's update as Shampoo without accumulation."""

from __future__ import annotations

import math

import streamlit as st

from course.lessons import Lab
from natgrad.preconditioners import measure_along, muon_as_shampoo
from natgrad.snapshots import SMALL_WIDTHS, curvature_snapshots
from natgrad.viz.preconditioners import (
    METRICS,
    comparison_figure,
    singular_values_figure,
    spectrum_figure,
    training_figure,
)
from views.labs.common import cached, device, jobs, settings_form
from views.labs.figures import chart

TRAIN_STEPS = [0, 10, 25, 50, 100, 200, 400]
LAMBDAS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
STATISTICS = {"true": "exact Fisher (labels drawn from the model)", "empirical": "empirical Fisher (observed labels)"}
EXAMPLES = 512


def _measures(statistic: str, lam: float) -> tuple[list[tuple[int, float]], list]:
    """(step, loss) at each snapshot and every method's measures there: only what the lab draws
    (the Fisher matrices stay inside the computation; they are kept per statistic, so a new λ
    only measures again)."""
    dev, registry = device(), jobs()

    def snapshots():
        return curvature_snapshots(TRAIN_STEPS, examples=EXAMPLES, statistic=statistic, device=dev)

    def compute(progress):
        progress(0.0, "training the small classifier and computing its exact Fisher at 7 steps")
        job = registry.submit(("precond-snapshots", statistic, dev), snapshots, "exact Fisher along training")
        job.wait()
        registry.leave(job)
        snaps = job.outcome()
        progress(0.5, "building every method's direction and the spectra of P(F + λI)")
        return [(t, loss) for t, loss, _ in snaps], measure_along([c for _, _, c in snaps], lam)

    return cached(("precond-lab", statistic, lam, dev), compute, label="Directions against the natural gradient")


def preconditioner_lab(lab: Lab) -> None:
    widths = "-".join(str(w) for w in SMALL_WIDTHS)
    st.markdown(
        f"A {widths} tanh classifier on the digits pooled to 4x4 pixels is small enough (444 parameters) for its "
        f"exact Fisher $F$ on {EXAMPLES} digits. At the training step you pick (the model is trained with Adam), "
        "every method builds its direction from the **same gradient $g$ and the same statistics**, and each is "
        "compared with the damped natural gradient $(F+\\lambda I)^{-1}g$: the cosine between the two; the "
        "relative error of the best multiple of the direction, measured in the $(F+\\lambda I)$-norm (0: a line "
        "search along it gets all of the natural gradient's predicted decrease; 1: none); and the spread of the "
        "eigenvalues of $P(F+\\lambda I)$, where $P$ is the method's preconditioner (the natural gradient's is all "
        "ones). Every method adds the same $\\lambda$ to its curvature before taking its power. Adam and RMSprop "
        "use $\\operatorname{diag}F^{-1/2}$, the diagonal Fisher $\\operatorname{diag}F^{-1}$, Shampoo the partial "
        "traces $L=\\mathbb{E}[GG^\\top]$, $R=\\mathbb{E}[G^\\top G]$ of each weight's Fisher block, SOAP Adam's "
        "diagonal in their eigenbasis, Muon $UV^\\top$ of the gradient itself, Sophia its Gauss-Newton-Bartlett "
        "estimate from labels drawn from the model, with its clipping."
    )

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(step=c1.select_slider("training step", TRAIN_STEPS, value=100, key="pc-step", bind="query-params",
                                          help="The classifier is trained with Adam for this many steps; the "
                                               "directions are compared at the weights it reached."),
                    lam=c2.select_slider("damping λ", LAMBDAS, value=1e-3, key="pc-lam", bind="query-params",
                                         help="Added to every method's curvature before its power is taken, and to "
                                              "F in the natural gradient they are compared with."),
                    statistic=c3.radio("statistics", list(STATISTICS), format_func=STATISTICS.get, key="pc-stat", bind="query-params",
                                       help="Which Fisher every method builds its statistics from."))

    s = settings_form("pc", draw, submit="Compare the directions")[0]
    if s is None:
        return
    snaps, measures = _measures(s["statistic"], s["lam"])
    i = TRAIN_STEPS.index(s["step"])
    step, loss = snaps[i]
    at = measures[i]
    st.markdown(f"**At step {step}** (training loss {loss:.3f}), λ = {s['lam']:g}:")
    chart(comparison_figure(at), "pc-fig-compare")
    st.table([{"method": name, "cosine": f"{m.cosine:.4f}", "relative error": f"{m.relative_error:.4f}",
               "condition number": f"{m.condition_number:.3g}" if math.isfinite(m.condition_number) else "∞"}
              for name, m in at.items()], hide_index=True)
    with st.expander("Eigenvalues of P(F + λI), divided by their median"):
        chart(spectrum_figure(at), "pc-fig-spectrum")
    st.markdown("**Along training** (the same λ and statistics; one line per method):")
    series = {name: {metric: [] for metric in METRICS} for name in at}
    for ms in measures:
        for name in series:
            m = ms[name]
            for metric, v in zip(METRICS, (m.cosine, m.relative_error, m.condition_number), strict=True):
                series[name][metric].append(v)
    chart(training_figure([t for t, _ in snaps], series, [x for _, x in snaps]), "pc-fig-train")


def muon_check(lab: Lab) -> None:
    st.markdown(
        "With its statistics built from one gradient $G=U\\Sigma V^\\top$ alone, Shampoo's $-1/4$ step is "
        "$L^{-1/4}GR^{-1/4}=U\\Sigma^{-1/2}U^\\top\\,U\\Sigma V^\\top\\,V\\Sigma^{-1/2}V^\\top=UV^\\top$. Below, "
        "natgrad's `Shampoo` takes its first step (summed statistics start at zero, so they hold this gradient "
        "only; no momentum, no grafting, $\\epsilon$ = 10⁻¹² of the largest eigenvalue) and `torch.optim.Muon` "
        "takes one step (momentum 0, five Newton-Schulz iterations in bfloat16) on the same random matrix."
    )

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(m=c1.select_slider("rows m", [4, 8, 16, 24, 32, 64], value=24, key="mc-m", bind="query-params",
                                       help="Rows of the random gradient matrix G."),
                    n=c2.select_slider("columns n", [4, 8, 16, 24, 32, 64], value=16, key="mc-n", bind="query-params",
                                       help="Columns of the random gradient matrix G."),
                    seed=c3.number_input("seed", 0, 10_000, 0, key="mc-seed", bind="query-params",
                                         help="Which random matrix: the same seed gives the same matrix."))

    s = settings_form("mc", draw, submit="Check on a random matrix")[0]
    if s is None:
        return
    r = cached(("muon-check", s["m"], s["n"], int(s["seed"])), lambda: muon_as_shampoo(s["m"], s["n"], int(s["seed"])),
               instant=True)
    c1, c2, c3 = st.columns(3)
    c1.metric("max |Shampoo step − UVᵀ|", f"{r['shampoo_vs_polar']:.1e}",
              delta="agrees to 1e-6" if r["shampoo_vs_polar"] < 1e-6 else "differs", delta_color="off",
              delta_arrow="off")
    c2.metric("max |Muon step − UVᵀ|", f"{r['muon_vs_polar']:.2f}")
    c3.metric("cosine(Muon step, UVᵀ)", f"{r['muon_cosine']:.4f}")
    chart(singular_values_figure(r["singular_values"]), "mc-fig")
    st.caption("Shampoo's step has every singular value 1 up to the regulariser; torch's five bfloat16 "
               "Newton-Schulz steps only push them into a band around 1 (its coefficients are tuned for speed, "
               "not convergence), which is why Muon is called an approximate orthogonalisation.")
