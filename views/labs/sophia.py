"""Lab of lesson 6: Sophia's clipping on a toy with negative curvature, then Sophia-G,
Sophia-H, AdamW and Adam on the character-level transformer."""

from __future__ import annotations

import numpy as np
import streamlit as st

from course.lessons import Lab
from natgrad.bench import sophia as sophia_bench
from natgrad.bench.protocol import load as load_bench
from natgrad.experiments import Spec
from natgrad.labs.paths import TOY_SOPHIA, toy_paths
from natgrad.presets import ADAMW_BASE, PRESETS, SOPHIA_BASE
from natgrad.tasks.chars import BATCH, sample_text
from natgrad.tasks.toy2d import NEGATIVE_CURVATURE_START, NegativeCurvature
from natgrad.viz import contour_paths_figure, fraction_figure
from views.labs.common import BENCH_DIR, bench_results, cached, device, ready, run_all, settings_form, show_runs
from views.labs.figures import chart

GAMMAS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
TOY_LRS = [0.01, 0.03, 0.05, 0.1, 0.2, 0.3]
PERIODS = [1, 2, 5, 10, 20, 50]
MARKS = {"minimum": (1.0, 4.0), "saddle (x: maximum)": (0.0, 4.0), "local minimum in x": (-0.65, 4.0)}
CHAR_STEPS = [50, 100, 200, 300, 500]
CHAR_LRS = [3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 4e-3, 6e-3, 8e-3, 1e-2, 2e-2]
RHOS = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
PROMPT = "The Fisher "


def _toy_part() -> None:
    x0, y0 = NEGATIVE_CURVATURE_START
    st.markdown(
        "$\\mathcal{L}(\\theta_1, \\theta_2) = 8(\\theta_1 - 1)^2(1.3\\theta_1^2 + 2\\theta_1 + 1) + \\tfrac12(\\theta_2 - 4)^2$: "
        "sharp and non-convex along $\\theta_1$ (a local maximum at 0), flat along $\\theta_2$. The start "
        f"$({x0:g}, {y0:g})$ lies where $\\partial^2 \\mathcal{{L}} / \\partial\\theta_1^2 < 0$. **Sophia** (Hutchinson's "
        "estimate, exact here because the Hessian is diagonal; betas "
        f"{TOY_SOPHIA['betas']}, no weight decay), **Adam** at the same learning rate, and **Newton's method** "
        "(full steps, exact Hessian)."
    )

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(gamma=c1.select_slider("Sophia's γ", GAMMAS, value=1.0, key="sc-gamma", bind="query-params",
                                           help="Sophia divides the momentum by γ·h (h: its curvature estimate) and "
                                                "clips the result to ±1. Small γ: more coordinates clipped. "
                                                "(The authors' code calls it rho.)"),
                    lr=c2.select_slider("learning rate η", TOY_LRS, value=0.05, key="sc-lr", bind="query-params",
                                        help="The step size of Sophia and of Adam; a clipped Sophia step moves "
                                             "exactly η."),
                    k=c3.select_slider("curvature refresh k", PERIODS, value=10, key="sc-k", bind="query-params",
                                       help="Sophia re-estimates the curvature every k steps and reuses the last "
                                            "estimate in between."),
                    steps=c1.select_slider("steps", [25, 50, 100, 200], value=100, key="sc-steps", bind="query-params",
                                           help="How many steps each of the three takes."))

    s = settings_form("sc", draw, submit="Run the three")[0]
    if s is None:
        return
    paths = cached(("sophia-toy", s["gamma"], s["lr"], s["k"], s["steps"]),
                   lambda: toy_paths(s["gamma"], s["lr"], s["k"], s["steps"]), label="Sophia, Adam and Newton")
    for label, p in paths.items():
        if p.status != "ok":
            st.warning(f"**{label}**: {p.message}", icon=":material/trending_up:")
    xs, ys = np.linspace(-1.2, 1.6, 160), np.linspace(-1.0, 6.0, 160)
    X, Y = np.meshgrid(xs, ys)
    chart(contour_paths_figure(xs, ys, NegativeCurvature.value(X, Y), {k: p.points for k, p in paths.items()},
                               marks=MARKS, title="Sophia, Adam and Newton from the same start"), "sc-fig")
    cols = st.columns(3)
    for col, (label, p) in zip(cols, paths.items(), strict=True):
        end = p.points[-1]
        col.metric(label, f"f = {p.loss[-1]:.3g}", help="the objective at the last iterate",
                   delta=f"ends at ({end[0]:.2f}, {end[1]:.2f})", delta_color="off", delta_arrow="off")
    clipped = paths["Sophia"].extras.get("clipped_fraction", [])
    first_unclipped = next((t for t, c in enumerate(clipped) if c is not None and c < 1), None)
    h0 = float(np.diff(np.diff([NegativeCurvature.value(x0 + d, y0) for d in (-1e-4, 0, 1e-4)]))[0] / 1e-8)
    st.caption(
        f"At the start the curvature along θ₁ is {h0:.1f}: Newton's step −g/h points uphill there and walks to "
        "the stationary point at θ₁ = 0, a maximum along θ₁ (a saddle of f). Sophia floors a non-positive γh at "
        "ε and clips, so it moves η per step downhill instead. "
        + (f"Its first step with an unclipped coordinate was step {first_unclipped}; "
           if first_unclipped is not None else "Every coordinate was clipped at every step; ")
        + "once θ₁ is in the bowl around the minimum the step along θ₁ is γ⁻¹η times Newton's (γ = η gives "
        "Newton's step itself), while along the flat θ₂ it stays clipped until |m| < γh. Raise k and the "
        "estimate goes stale; shrink γ and Sophia clips more and behaves like sign descent."
    )
    steps = list(range(1, len(clipped) + 1))
    chart(fraction_figure({"Sophia": steps}, {"Sophia": clipped}, "Sophia: fraction of the 2 coordinates clipped"),
          "sc-clipped")


def _char_specs(s: dict) -> dict[str, Spec]:
    common = dict(task="lesson-chars", steps=s["steps"], batch_size=BATCH, device=device(), keep_model=True)
    sophia = dict(SOPHIA_BASE, update_period=s["k"])
    return {
        "Sophia-G": Spec.make(dict(sophia, estimator="gnb", lr=s["g_lr"], rho=s["g_rho"]), optimizer="sophia",
                              **common),
        "Sophia-H": Spec.make(dict(sophia, estimator="hutchinson", lr=s["h_lr"], rho=s["h_rho"]), optimizer="sophia",
                              **common),
        "AdamW": Spec.make(dict(ADAMW_BASE, lr=s["adamw_lr"]), optimizer="adamw", **common),
        "Adam": Spec.make({"lr": s["adam_lr"]}, optimizer="adam", **common),
    }


def _nearest(options: list[float], value: float) -> float:
    return min(options, key=lambda o: abs(np.log(o) - np.log(value)))


def _defaults() -> dict[str, float]:
    """The sliders start at the benchmark's tuned settings (docs/bench/sophia.json), else at the presets."""
    out = dict(g_lr=PRESETS["sophia"]["lr"], g_rho=PRESETS["sophia"]["rho"], h_lr=PRESETS["sophia"]["lr"],
               h_rho=PRESETS["sophia"]["rho"], adamw_lr=PRESETS["adamw"]["lr"], adam_lr=PRESETS["adamw"]["lr"])
    r = load_bench(BENCH_DIR / "sophia.json")
    if r is not None:
        final = r["final"]
        out.update(g_lr=final["Sophia-G"]["hparams"]["lr"], g_rho=final["Sophia-G"]["hparams"]["rho"],
                   h_lr=final["Sophia-H"]["hparams"]["lr"], h_rho=final["Sophia-H"]["hparams"]["rho"],
                   adamw_lr=final["AdamW"]["hparams"]["lr"], adam_lr=final["AdamW"]["hparams"]["lr"])
    return {k: _nearest(RHOS if k.endswith("rho") else CHAR_LRS, v) for k, v in out.items()}


def _bench_summary() -> None:
    r = load_bench(BENCH_DIR / "sophia.json")
    if r is None:
        return
    final = r["final"]
    steps = max(r["protocol"]["horizons"])
    parts = [f"{label} {f['loss']:.3f}" for label, f in final.items()]
    ratios = ", ".join(f"{label} {ratio:.2f}x" for label, ratio in r["timing"]["ratio_to_adamw"].items())
    st.markdown(
        f"**Stored benchmark** (`python -m natgrad.bench sophia`, each method tuned by the benchmark itself): "
        f"whole-text loss after {steps} steps {', '.join(parts)}; time per step relative to AdamW at k = "
        f"{r['protocol']['update_period']}, measured side by side: {ratios}."
    )


def _char_part() -> None:
    st.markdown(
        "A two-layer character-level transformer (width 32, 4 heads, context 32, about 33k parameters) learns "
        "to continue this course's own lesson text. Sophia-G samples one character per position from the "
        f"model's prediction every k steps; all four see the same mini-batches of {BATCH} sequences. The "
        "learning rates and γ start at the values the stored benchmark found best for each method."
    )
    _bench_summary()
    bench_results("sophia", "Sophia vs tuned AdamW on the character model", sophia_bench.report)

    d = _defaults()

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        lr_help = "The step size of {}; it starts at the value the stored benchmark found best."
        gamma_help = ("{}'s γ: the momentum is divided by γ times the curvature estimate, then clipped to ±1 "
                      "(the authors' code calls it rho). It starts at the benchmark's best.")
        return dict(steps=c1.select_slider("steps", CHAR_STEPS, value=200, key="sx-steps", bind="query-params",
                                           help="How many updates each of the four makes."),
                    k=c1.select_slider("Sophia's curvature refresh k", PERIODS, value=10, key="sx-k", bind="query-params",
                                       help="Both Sophias re-estimate the curvature every k steps; that estimate is "
                                            "the extra cost they pay over AdamW."),
                    g_lr=c2.select_slider("Sophia-G learning rate", CHAR_LRS, value=d["g_lr"], key="sx-glr", bind="query-params",
                                          help=lr_help.format("Sophia-G")),
                    g_rho=c2.select_slider("Sophia-G's γ", RHOS, value=d["g_rho"], key="sx-grho", bind="query-params",
                                           help=gamma_help.format("Sophia-G")),
                    h_lr=c2.select_slider("Sophia-H learning rate", CHAR_LRS, value=d["h_lr"], key="sx-hlr", bind="query-params",
                                          help=lr_help.format("Sophia-H")),
                    h_rho=c2.select_slider("Sophia-H's γ", RHOS, value=d["h_rho"], key="sx-hrho", bind="query-params",
                                           help=gamma_help.format("Sophia-H")),
                    adamw_lr=c3.select_slider("AdamW learning rate", CHAR_LRS, value=d["adamw_lr"], key="sx-alr", bind="query-params",
                                              help=lr_help.format("AdamW")),
                    adam_lr=c3.select_slider("Adam learning rate", CHAR_LRS, value=d["adam_lr"], key="sx-adam", bind="query-params",
                                             help="The step size of Adam (no weight decay); it starts at AdamW's."))

    s = settings_form("sx", draw)[0]
    if s is None:
        return
    specs = _char_specs(s)
    trajs = run_all(specs)
    show_runs("sx", trajs, {"steps": s["steps"], "k": s["k"], "Sophia-G learning rate": s["g_lr"],
                            "Sophia-G γ": s["g_rho"], "Sophia-H learning rate": s["h_lr"], "Sophia-H γ": s["h_rho"],
                            "AdamW learning rate": s["adamw_lr"], "Adam learning rate": s["adam_lr"]})
    sophias = {k: t for k, t in trajs.items() if "clipped_fraction" in t.extras}
    chart(fraction_figure({k: t.step for k, t in sophias.items()},
                          {k: t.extras["clipped_fraction"] for k, t in sophias.items()}), "sx-clipped")
    st.caption("The clipped fraction starts near 1: Sophia's curvature average h starts at 0 and has no bias "
               "correction, so early steps are sign steps of size η until h has grown.")
    st.markdown(f"**Generated text** (prompt “{PROMPT}”, 200 characters, temperature 0.8, the same seed for all)")
    for label, t in trajs.items():
        key = ("chars-sample", specs[label])
        if t.model_state is None and not ready(key):  # a shipped run keeps no weights, only its sample
            continue
        text = cached(key, lambda t=t: sample_text(t.model_state, PROMPT, 200), label=f"{label}: sampling text")
        st.markdown(f"*{label}* (final training loss {t.final_loss:.3f})")
        st.code(text + "\n", language=None)  # (st.code drops one trailing newline: a sample may end with its own)


def sophia_clipping(lab: Lab) -> None:
    _toy_part()
    st.divider()
    _char_part()
