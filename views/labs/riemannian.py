"""Labs of the Riemannian lesson: where steps land (sphere, Stiefel p = 1, simplex), and the Stiefel manifold
in practice. The simplex and Poincare labs are in ``views/labs/hyperbolic.py``."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from course.lessons import Lab
from natgrad.experiments import Spec, Trajectory
from natgrad.optim.riemannian import SIMPLEX_METHODS, SPHERE_METHODS, simplex_steps, sphere_steps
from natgrad.presets import MANIFOLD_PRESETS
from natgrad.tasks.manifolds import digits_covariance
from natgrad.viz import simplex_steps_figure, sphere_figure, step_distances_figure, stiefel_figure
from views.labs.common import device, lazy_tabs, report_status, run_all, settings_form
from views.labs.figures import chart, with_previous

EXP, PROJ, QR, CAYLEY = SPHERE_METHODS
LR_CHOICES = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0]
S_EXP, S_RETR, S_PROJ = SIMPLEX_METHODS


# ------------------------------------------------------------------ retraction vs exponential map
def _sphere_tab() -> None:
    c1, c2, c3 = st.columns(3)
    lat = c1.slider("point: latitude (°)", -85, 85, 30, key="rx-lat", bind="query-params",
                    help="Where the point x sits on the sphere: degrees north of the equator.")
    lon = c1.slider("point: longitude (°)", -180, 180, 20, key="rx-lon", bind="query-params",
                    help="Where the point x sits on the sphere: degrees east.")
    heading = c2.slider("step direction (°)", 0, 360, 45, key="rx-head", bind="query-params",
                        help="The direction of the step in the tangent plane at x, in degrees from east "
                             "(90: north).")
    tilt = c2.slider("tilt out of the tangent plane (°)", -60, 60, 20, key="rx-tilt", bind="query-params",
                     help="Tips the Euclidean step d out of the tangent plane, as a raw gradient would be; the "
                          "methods first project it back.")
    length = c3.slider("step length |d|", 0.05, 3.0, 1.5, 0.05, key="rx-len", bind="query-params",
                       help="The Euclidean length of the step d. Short steps: every method agrees; long ones: "
                            "they part.")
    s = sphere_steps(lat, lon, heading, tilt, length)
    chart(sphere_figure(s), "rx-sphere")
    n = float(np.linalg.norm(s.tangent))
    arcs = {name: float(np.arccos(np.clip(s.point @ y, -1.0, 1.0))) for name, y in s.landings.items()}
    cols = st.columns(4)
    for col, name in zip(cols, SPHERE_METHODS, strict=True):
        col.metric(name, f"{arcs[name]:.3f} rad", help="arc from x to where this method lands")
    chart(step_distances_figure(s.scales, s.travelled, s.apart, n), "rx-sphere-dist")
    gap_qr = float(np.linalg.norm(s.landings[QR] - s.landings[PROJ]))
    st.caption(
        f"The Euclidean step $x+d$ ends at norm {np.linalg.norm(s.euclidean):.3f}, off the sphere. Its tangent "
        f"projection $v = d - (x^\\top d)\\,x$ has length {n:.3f}. Along the same direction the exponential map "
        f"travels the whole {arcs[EXP]:.3f} rad, the projection $(x+v)/\\lVert x+v\\rVert$ only "
        f"$\\arctan {n:.3f}$ = {arcs[PROJ]:.3f}, the Cayley retraction $2\\arctan({n:.3f}/2)$ = {arcs[CAYLEY]:.3f}. "
        f"For one column ($p = 1$, the Stiefel manifold St(3, 1) is this sphere) the QR retraction is the same "
        f"normalisation as the projection: its landing point is {gap_qr:.1e} away. All agree to first order, "
        "which is all a retraction promises (Absil, Mahony & Sepulchre, 2008); the right panel shows how fast "
        "they part as the step grows. Points computed with geoopt's Sphere, SphereExact, EuclideanStiefel (QR) "
        "and CanonicalStiefel (Cayley)."
    )


def _simplex_tab() -> None:
    c1, c2, c3 = st.columns(3)
    p1 = c1.slider("point: p1", 0.02, 0.96, 0.6, 0.01, key="rs-p1", bind="query-params",
                   help="The probability of outcome 1 at the starting point (p3 is what p1 and p2 leave).")
    p2 = c1.slider("point: p2", 0.02, 0.96, 0.3, 0.01, key="rs-p2", bind="query-params",
                   help="The probability of outcome 2 at the starting point.")
    angle = c2.slider("direction of u (°)", 0, 360, 60, key="rs-angle", bind="query-params",
                      help="The direction of the step u in the triangle, in degrees: 0 points towards outcome 2, "
                           "90 towards outcome 3.")
    length = c3.slider("Euclidean length of u", 0.02, 1.0, 0.5, 0.01, key="rs-len", bind="query-params",
                       help="How long the step u is, measured as an ordinary vector.")
    p3 = 1.0 - p1 - p2
    if p3 < 0.01:
        st.warning(f"p1 + p2 = {p1 + p2:.2f} leaves p3 = {p3:.2f}: a point of the open simplex needs every "
                   "probability above zero. Lower p1 or p2.", icon=":material/warning:")
        return
    s = simplex_steps((p1, p2, p3), angle, length)
    c1, c2 = st.columns([3, 2])
    chart(simplex_steps_figure(s), "rs-fig", c1)
    chart(step_distances_figure(s.scales, None, s.apart, length, " (Euclidean)"), "rs-dist", c2)
    face = (f"The geodesic reaches a face (a probability hits 0) at $t$ = {s.face_time:.2f} and is reflected "
            "there: past the face the curve is the great circle of the sphere $z = 2\\sqrt{p}$ squared back onto "
            "the simplex." if s.face_time <= 1 else
            f"The geodesic stays inside for the whole step (it would reach a face at $t$ = {s.face_time:.2f}).")
    neg = [i + 1 for i, v in enumerate(s.euclidean) if v < 0]
    st.caption(
        f"$p$ = ({p1:.2f}, {p2:.2f}, {p3:.2f}) and $u$ = ({', '.join(f'{v:+.3f}' for v in s.tangent)}), Fisher-Rao "
        f"length $\\lVert u\\rVert_p = \\sqrt{{\\sum_i u_i^2/p_i}}$ = {s.fisher_length:.3f}. "
        + (f"The Euclidean step $p+u$ has $p_{{{neg[0]}}} < 0$: not a distribution. " if neg else
           "The Euclidean step $p+u$ is still a distribution here. ")
        + face + " The retraction $p\\odot e^{u/p}/Z$ (Sun et al., 2015) never leaves the open simplex, and "
        "applied to minus the natural gradient it is the exponentiated-gradient step. The Euclidean projection "
        "of $p+u$ is what projected gradient descent does; it can put a probability on the floor of $10^{-12}$."
    )


SIMPLEX_TAB, SPHERE_TAB = "probability simplex (Fisher-Rao)", "unit sphere (= Stiefel St(3, 1))"


def retractions(lab: Lab) -> None:
    st.markdown(
        "Set a point and a step. The grey segment is the Euclidean step, which leaves the manifold; the black "
        "dashed one its projection onto the tangent space; the markers show where the exponential map and the "
        "retractions send that tangent vector. Drag the length up to see them part."
    )
    # only the open tab is drawn (a rerun of this lab when the learner switches): the sphere is a WebGL
    # figure, which took 0.8 s of the page's drawing in Chromium without a GPU
    lazy_tabs("rx-tab", {SIMPLEX_TAB: _simplex_tab, SPHERE_TAB: _sphere_tab})


# ------------------------------------------------------------------ Stiefel in practice
STIEFEL_RUNS = {  # label -> optimizer, extra hyper-parameters
    "Riemannian SGD": ("riemannian-sgd", {}),
    "Riemannian Adam": ("riemannian-adam", {}),
    "projected Adam (Adam, then re-orthonormalise)": ("projected-adam", {}),
    "Adam (plain, ignores QᵀQ = I)": ("adam", {"on_manifold": "warn"}),
}


def _stiefel_settings() -> dict | None:
    p = MANIFOLD_PRESETS["stiefel-pca"]

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(
            k=c1.select_slider("k (eigenvectors)", list(range(1, 9)), value=4, key="st-k", bind="query-params",
                               help="How many principal directions to find: Q has k orthonormal columns."),
            steps=c1.select_slider("steps", [50, 100, 200, 400], value=200, key="st-steps", bind="query-params",
                                   help="How many updates each of the four runs makes."),
            retraction=c2.radio("retraction of the Riemannian runs", ["qr", "cayley"], key="st-retr", bind="query-params",
                                format_func={"qr": "QR (EuclideanStiefel)", "cayley": "Cayley (CanonicalStiefel)"}.get,
                                help="How the Riemannian runs bring a step back onto the manifold."),
            rsgd_lr=c3.select_slider("Riemannian SGD learning rate", LR_CHOICES,
                                     value=p["riemannian-sgd"]["lr"], key="st-rsgd", bind="query-params",
                                     help="The step size of Riemannian SGD."),
            adam_lr=c3.select_slider("Adam learning rate", LR_CHOICES,
                                     value=p["riemannian-adam"]["lr"], key="st-adam", bind="query-params",
                                     help="One step size for the three Adams: Riemannian, projected and plain."))

    return settings_form("st", draw)[0]


def _stiefel_rows(trajs: dict[str, Trajectory], best: float) -> list[dict]:
    rows = []
    for label, t in trajs.items():
        obj, err = t.extras.get("objective", []), t.extras.get("orthogonality error", [])
        close = next((s for s, v in zip(t.step, obj, strict=True) if v is not None and abs(best - v) < 1e-3 * best
                      and err[s] is not None and err[s] < 1e-4), None)
        rows.append({"run": label, "final tr(QᵀCQ)": f"{obj[-1]:.5g}" if obj else "n/a",
                     "final max |QᵀQ − I|": f"{err[-1]:.1e}" if err else "n/a",
                     "first step within 0.1% of the best, orthonormal": "not reached" if close is None else str(close)})
    return rows


def stiefel_practice(lab: Lab) -> None:
    st.markdown(
        "Find the top $p$ principal directions of the 8x8 digits: maximise $\\operatorname{tr}(Q^\\top C Q)$ "
        "over $Q \\in \\mathbb{R}^{64\\times p}$ with $Q^\\top Q = I$ (a point of the Stiefel manifold St(64, p)), $C$ the "
        "pixel covariance scaled so its largest eigenvalue is 1. The best value is the sum of the $p$ largest "
        "eigenvalues (Fan, 1949). Four runs "
        "from the same random orthonormal start: geoopt's Riemannian SGD and Riemannian Adam (gradient projected "
        "onto the tangent space, then a retraction), Adam followed by re-orthonormalisation (the polar factor "
        "$UV^\\top$ of an SVD), and plain Adam."
    )
    s = _stiefel_settings()
    if s is None:
        return
    options = {"k": s["k"], "retraction": s["retraction"]}
    lrs = {"riemannian-sgd": s["rsgd_lr"], "riemannian-adam": s["adam_lr"], "projected-adam": s["adam_lr"],
           "adam": s["adam_lr"]}
    trajs = run_all({label: Spec.make({"lr": lrs[opt], **extra}, options, task="stiefel-pca", optimizer=opt,
                                      steps=s["steps"], device=device())
                     for label, (opt, extra) in STIEFEL_RUNS.items()})
    for label, t in trajs.items():
        report_status(label, t)
    eig = np.linalg.eigvalsh(digits_covariance().numpy())
    best = float(eig[-s["k"]:].sum())
    shown = with_previous("st", {label: t for label, t in trajs.items() if t.step},
                          {"k": s["k"], "steps": s["steps"], "retraction": s["retraction"],
                           "Riemannian SGD learning rate": s["rsgd_lr"], "Adam learning rate": s["adam_lr"]})
    runs = {label: (t.step, list(t.extras.get("objective", [])), list(t.extras.get("orthogonality error", [])))
            for label, t in shown.items()}
    chart(stiefel_figure(runs, best), "st-fig")
    st.table(_stiefel_rows({k: v for k, v in trajs.items() if v.step}, best), hide_index=True)
    plain = trajs["Adam (plain, ignores QᵀQ = I)"]
    proj = trajs["projected Adam (Adam, then re-orthonormalise)"]
    plain_obj = plain.extras.get("objective", [math.nan])[-1]
    st.caption(
        f"The best orthonormal value is {best:.4f}. Plain Adam ends at tr(QᵀCQ) = {plain_obj:.4g}, "
        f"{'above' if plain_obj > best else 'below'} that bound, because its columns are no longer orthonormal "
        f"(max |QᵀQ − I| = {plain.extras.get('orthogonality error', [math.nan])[-1]:.3g}): stretching $Q$ raises the "
        "objective without limit, so the number means nothing. Re-orthonormalising after Adam keeps the "
        f"constraint but ended at {proj.extras.get('objective', [math.nan])[-1]:.4g}: Adam divides every "
        "coordinate by its own running size, so the part of the gradient that only stretches the columns (the "
        "part the projection removes) leaks into the directions along the manifold, and what survives the "
        "projection is no longer a descent direction. The Riemannian runs project the gradient first and keep "
        "$Q^\\top Q = I$ to rounding error. With Cayley, the float32 error grows slowly over many steps (geoopt's "
        "`stabilize` option re-projects every few steps)."
    )
