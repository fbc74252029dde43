"""Figures of the Riemannian lessons: the sphere and the simplex with where steps land, Stiefel runs,
simplex trajectories on a ternary plot, and the Poincare disk animated over training."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import geoopt
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from natgrad.optim.riemannian.steps import SIMPLEX_METHODS, SPHERE_METHODS, SimplexSteps, SphereSteps
from natgrad.viz.style import color_of, dash_of, log_decades, recolor

__all__ = ["disk_frames", "poincare_figure", "recolor", "recorded_points", "run_color", "simplex_steps_figure",
           "sphere_figure", "step_distances_figure", "stiefel_figure", "ternary_figure"]

METHOD_COLORS = {
    SPHERE_METHODS[0]: "#d62728", SPHERE_METHODS[1]: "#1f77b4", SPHERE_METHODS[2]: "#17becf",
    SPHERE_METHODS[3]: "#2ca02c", SIMPLEX_METHODS[0]: "#d62728", SIMPLEX_METHODS[1]: "#2ca02c",
    SIMPLEX_METHODS[2]: "#1f77b4",
}
METHOD_SYMBOLS = {SPHERE_METHODS[0]: "diamond", SPHERE_METHODS[1]: "circle", SPHERE_METHODS[2]: "circle-open",
                  SPHERE_METHODS[3]: "square", SIMPLEX_METHODS[0]: "diamond", SIMPLEX_METHODS[1]: "square",
                  SIMPLEX_METHODS[2]: "circle"}
STEP_COLOR, TANGENT_COLOR = "#7f7f7f", "#000000"


def run_color(label: str, i: int = 0) -> str:
    """A run's colour: the course's one colour per method (:func:`natgrad.viz.style.color_of`)."""
    return color_of(label, i)


# ------------------------------------------------------------------------------------------ sphere
def _line3(a: np.ndarray, b: np.ndarray, name: str, color: str, dash: str = "solid", show: bool = True) -> go.Scatter3d:
    return go.Scatter3d(x=[a[0], b[0]], y=[a[1], b[1]], z=[a[2], b[2]], mode="lines", name=name, showlegend=show,
                        line=dict(color=color, width=6, dash=dash))


def _marker3(p: np.ndarray, name: str, color: str, symbol: str = "circle", size: int = 6) -> go.Scatter3d:
    return go.Scatter3d(x=[p[0]], y=[p[1]], z=[p[2]], mode="markers", name=name,
                        marker=dict(color=color, size=size, symbol=symbol, line=dict(color=color, width=2)))


def sphere_figure(s: SphereSteps) -> go.Figure:
    """The unit sphere, the point, the Euclidean step (off the sphere), its tangent projection, the geodesic,
    and where each method lands."""
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 40), np.linspace(0, np.pi, 20))
    fig = go.Figure(go.Surface(x=np.cos(u) * np.sin(v), y=np.sin(u) * np.sin(v), z=np.cos(v), opacity=0.25,
                               showscale=False, colorscale=[[0, "#c6dbef"], [1, "#c6dbef"]], hoverinfo="skip",
                               name="unit sphere"))
    x = s.point
    fig.add_trace(_marker3(x, "point x", "black", size=5))
    fig.add_trace(_line3(x, s.euclidean, "Euclidean step x + d (leaves the sphere)", STEP_COLOR))
    fig.add_trace(_marker3(s.euclidean, f"x + d: norm {np.linalg.norm(s.euclidean):.3f}", STEP_COLOR, "x", 4))
    fig.add_trace(_line3(x, x + s.tangent, "tangent projection v = d − (x·d) x", TANGENT_COLOR, "dash"))
    fig.add_trace(go.Scatter3d(x=s.geodesic[:, 0], y=s.geodesic[:, 1], z=s.geodesic[:, 2], mode="lines",
                               name="geodesic Exp_x(t v), 0 ≤ t ≤ 1", line=dict(color=METHOD_COLORS[SPHERE_METHODS[0]],
                                                                                width=4)))
    fig.add_trace(_line3(x + s.tangent, s.landings[SPHERE_METHODS[1]], "normalising x + v", METHOD_COLORS[SPHERE_METHODS[1]],
                         "dot", show=False))
    for name, p in s.landings.items():
        fig.add_trace(_marker3(p, name, METHOD_COLORS[name], METHOD_SYMBOLS[name], 9 if name == SPHERE_METHODS[2] else 6))
    r = max(1.2, float(np.linalg.norm(s.euclidean)) + 0.05)
    # look at the point from the side of its step, so that the step's bend away from the tangent plane shows
    v = s.tangent if np.linalg.norm(s.tangent) > 1e-9 else np.cross(x, [0.0, 0.0, 1.0]) + np.array([1e-9, 0.0, 0.0])
    side = np.cross(x, v / np.linalg.norm(v))
    eye = 0.7 * x + 0.7 * side / max(np.linalg.norm(side), 1e-9) + np.array([0.0, 0.0, 0.25])
    eye = 1.1 * eye / np.linalg.norm(eye)
    axis = dict(range=[-r, r], showbackground=False, showticklabels=False, title="", showgrid=False, zeroline=False)
    fig.update_layout(title="where each method lands on the unit sphere", height=540,
                      margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.02),
                      scene=dict(aspectmode="cube", xaxis=axis, yaxis=axis, zaxis=axis,
                                 camera=dict(eye=dict(x=eye[0], y=eye[1], z=eye[2]))))
    return fig


def step_distances_figure(scales: Sequence[float], travelled: Mapping[str, Sequence[float]] | None,
                          apart: Mapping[str, Sequence[float]], current: float, unit: str = "") -> go.Figure:
    """Left (when ``travelled`` is given): geodesic distance from the point against the tangent vector's length.
    Right: each method's geodesic distance to the exponential map's landing point."""
    panels = ["distance from x travelled", "distance to the exponential map's landing"]
    cols = 2 if travelled is not None else 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=panels[2 - cols:])
    shown = set()
    for c, curves in enumerate([travelled, apart][2 - cols:], start=1):
        for name, ys in curves.items():
            fig.add_trace(go.Scatter(x=list(scales), y=list(ys), mode="lines", name=name, legendgroup=name,
                                     showlegend=name not in shown, line=dict(color=METHOD_COLORS.get(name, "black"), width=2,
                                                                     dash="dot" if name == SPHERE_METHODS[2] else "solid")),
                          row=1, col=c)
            shown.add(name)
        fig.add_vline(x=current, line_dash="dash", line_color="grey", row=1, col=c)
        fig.update_xaxes(title_text=f"length of the tangent vector{unit}", row=1, col=c)
    fig.update_yaxes(title_text="geodesic distance", row=1, col=1)
    fig.update_layout(title="how far each method travels as the step grows", height=370, margin=dict(t=70, b=40),
                      legend=dict(orientation="h", y=-0.3))
    return fig


# ------------------------------------------------------------------------------------------ simplex
TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])  # vertices of outcomes 1, 2, 3


def to_triangle(p: np.ndarray) -> np.ndarray:
    """Barycentric (..., 3) -> plane (..., 2); points with negative coordinates land outside the triangle."""
    return np.asarray(p) @ TRIANGLE


def simplex_steps_figure(s: SimplexSteps) -> go.Figure:
    """The simplex as a triangle: the point, the Euclidean step p + u, the Fisher-Rao geodesic (reflected at a
    face it reaches) and where the exponential map, the retraction and the Euclidean projection land."""
    fig = go.Figure()
    tri = np.vstack([TRIANGLE, TRIANGLE[:1]])
    fig.add_trace(go.Scatter(x=tri[:, 0], y=tri[:, 1], mode="lines", line=dict(color="black", width=1),
                             fill="toself", fillcolor="rgba(198,219,239,0.35)", name="simplex", hoverinfo="skip"))
    for i, (vx, vy) in enumerate(TRIANGLE):
        fig.add_annotation(x=vx, y=vy, text=f"outcome {i + 1}", showarrow=False, yshift=-14 if vy == 0 else 14)
    p, e = to_triangle(s.point), to_triangle(s.euclidean)
    outside = bool((s.euclidean < 0).any())
    fig.add_trace(go.Scatter(x=[p[0], e[0]], y=[p[1], e[1]], mode="lines+markers", name="Euclidean step p + u"
                             + (" (outside: a negative probability)" if outside else ""),
                             line=dict(color=STEP_COLOR, width=3), marker=dict(symbol=["circle", "x"], size=[1, 10])))
    g = to_triangle(s.geodesic)
    fig.add_trace(go.Scatter(x=g[:, 0], y=g[:, 1], mode="lines", name="geodesic Exp_p(t u), 0 ≤ t ≤ 1",
                             line=dict(color=METHOD_COLORS[SIMPLEX_METHODS[0]], width=3)))
    fig.add_trace(go.Scatter(x=[p[0]], y=[p[1]], mode="markers", name="point p", marker=dict(color="black", size=9)))
    for name, q in s.landings.items():
        xy = to_triangle(q)
        fig.add_trace(go.Scatter(x=[xy[0]], y=[xy[1]], mode="markers", name=name,
                                 marker=dict(color=METHOD_COLORS[name], size=12, symbol=METHOD_SYMBOLS[name])))
    fig.update_layout(title="where each method lands on the simplex", height=480, margin=dict(t=40, b=10),
                      legend=dict(orientation="h", y=-0.05),
                      xaxis=dict(visible=False, range=[-0.3, 1.3]),
                      yaxis=dict(visible=False, range=[-0.3, 1.05], scaleanchor="x"))
    return fig


def ternary_figure(paths: Mapping[str, np.ndarray], target: Sequence[float], start: Sequence[float]) -> go.Figure:
    """Trajectories (label -> (steps + 1, 3) distributions) on a ternary plot, with the start and the target."""
    fig = go.Figure()
    for i, (label, path) in enumerate(paths.items()):
        fig.add_trace(go.Scatterternary(a=path[:, 2], b=path[:, 0], c=path[:, 1], mode="lines+markers", name=label,
                                        marker=dict(size=4, color=run_color(label, i)),
                                        line=dict(color=run_color(label, i), width=2),
                                        hovertemplate="p = (%{b:.4f}, %{c:.4f}, %{a:.4f})<extra>" + label + "</extra>"))
    for name, q, symbol in (("start", start, "circle-open"), ("target q", target, "star")):
        fig.add_trace(go.Scatterternary(a=[q[2]], b=[q[0]], c=[q[1]], mode="markers", name=name,
                                        marker=dict(size=14, symbol=symbol, color="black")))
    fig.update_layout(title="paths of the distribution p on the simplex", height=460, margin=dict(t=70, b=10),
                      legend=dict(orientation="h", y=-0.1),
                      ternary=dict(aaxis=dict(title="p3"), baxis=dict(title="p1"), caxis=dict(title="p2")))
    return fig


# ------------------------------------------------------------------------------------------ Stiefel
def stiefel_figure(runs: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]], best: float) -> go.Figure:
    """Two panels per step: tr(QᵀCQ) with the best value on the manifold, and max |QᵀQ − I| (log scale).
    ``runs``: label -> (steps, objective, orthogonality error)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["objective tr(QᵀCQ)", "orthogonality error max |QᵀQ − I|"])
    for i, (label, (steps, objective, error)) in enumerate(runs.items()):
        color = run_color(label, i)
        line = dict(color=color, width=2, dash=dash_of(label))
        fig.add_trace(go.Scatter(x=list(steps), y=list(objective), mode="lines", name=label, legendgroup=label,
                                 line=line), row=1, col=1)
        fig.add_trace(go.Scatter(x=list(steps), y=[max(e, 1e-9) for e in error], mode="lines", name=label,
                                 legendgroup=label, showlegend=False, line=line), row=1, col=2)
    fig.add_hline(y=best, line_dash="dash", line_color="black", row=1, col=1,
                  annotation_text=f"best on the manifold: {best:.4f}", annotation_position="bottom right")
    ymax = max([best * 1.5] + [min(max(o), best * 3) for _, o, _ in runs.values() if len(o)])
    fig.update_yaxes(range=[0, ymax], row=1, col=1)
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=2)
    fig.update_yaxes(title_text="tr(QᵀCQ)", row=1, col=1)
    fig.update_yaxes(title_text="max |QᵀQ − I| (log scale)", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=380, margin=dict(t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return log_decades(fig)


# ------------------------------------------------------------------------------------------ Poincare disk
ARC_TOLERANCE = 0.002  # disk units (radius 1): under a pixel in the lab's 560-pixel figure


def _thin(path: np.ndarray, tol: float = ARC_TOLERANCE) -> list[np.ndarray]:
    """Each arc of ``path`` ((E, points, 2), evenly spaced in hyperbolic distance) with only every ``step``-th
    point, the largest step (a divisor of ``points - 1``, so both ends and, from 3 points, the middle stay)
    whose straight segments stay within ``tol`` of every dropped point: an edge near the rim of the disk is
    short and nearly straight, so a few points draw it, where a long one near the centre keeps them all."""
    n = path.shape[1]
    half = (n - 1) // 2
    # largest first, 1 last (always fits); all but the largest keep the middle point (a divisor of half)
    steps = [d for d in range(n - 1, 0, -1) if (n - 1) % d == 0 and (d == n - 1 or half % d == 0)]
    chosen = np.ones(len(path), dtype=int)
    undecided = np.ones(len(path), dtype=bool)
    for d in steps:
        kept = np.arange(0, n, d)
        # each point's distance to the straight segment between the kept points around it
        lo = np.minimum(np.arange(n) // d * d, n - 1 - d)
        a, ab = path[:, lo], path[:, lo + d] - path[:, lo]
        w = np.clip(np.sum((path - a) * ab, axis=2) / np.maximum(np.sum(ab * ab, axis=2), 1e-300), 0, 1)
        fits = np.linalg.norm(path - (a + w[..., None] * ab), axis=2).max(axis=1) <= tol
        take = undecided & fits
        chosen[take] = d
        undecided &= ~take
        if not undecided.any() or len(kept) == n:
            break
    return [p[::d] for p, d in zip(path, chosen, strict=True)]


def _edge_paths(x: np.ndarray, edges: Sequence[tuple[int, int]], inside: np.ndarray, points: int = 25):
    """Polyline coordinates of the geodesic arcs (geoopt's ``PoincareBall.geodesic``) between edge ends inside the
    disk, each with as few of its ``points`` as draw it within :data:`ARC_TOLERANCE` (:func:`_thin`); straight
    dashed segments where an end is outside (no geodesic there). Each is ``(xs, ys)``, float
    arrays with a NaN after every arc or segment (a gap in a plotly line): numpy arrays go to the browser as
    typed arrays, where lists of numbers would be checked one by one (3 s for the lab's 90 animation frames)."""
    ball = geoopt.PoincareBall().to(dtype=torch.float64)
    t = torch.linspace(0, 1, points, dtype=torch.float64)[None, :, None]

    def polylines(pieces: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:  # [(m, 2)] -> NaN-separated xs, ys
        if not len(pieces):
            return np.zeros(0), np.zeros(0)
        gap = np.full((1, 2), np.nan)
        flat = np.concatenate([part for p in pieces for part in (p, gap)])
        flat = flat.astype(np.float32)  # 4 decimals drawn: float32 halves what the browser receives
        return flat[:, 0], flat[:, 1]

    ok = [(a, b) for a, b in edges if inside[a] and inside[b]]
    arcs: list[np.ndarray] = []
    if ok:
        xt = torch.tensor(x, dtype=torch.float64)
        a, b = zip(*ok, strict=True)
        path = np.round(ball.geodesic(t, xt[list(a)][:, None, :], xt[list(b)][:, None, :]).numpy(), 4)  # (E, points, 2)
        arcs = _thin(path)
    bad = [(a, b) for a, b in edges if not (inside[a] and inside[b])]
    straight = [np.array([x[a], x[b]], dtype=float) for a, b in bad]
    return polylines(arcs), polylines(straight)


def _disk_traces(x: np.ndarray, names: Sequence[str], depth: Sequence[int], edges: Sequence[tuple[int, int]]):
    norms = np.linalg.norm(x, axis=1)
    inside = norms < 1
    arcs, broken = _edge_paths(x, edges, inside)
    text = [f"{n} (depth {d}, norm {r:.4f})" for n, d, r in zip(names, depth, norms, strict=True)]
    return [
        go.Scatter(x=arcs[0], y=arcs[1], mode="lines", line=dict(color="#9e9e9e", width=1), hoverinfo="skip",
                   name="geodesic edges"),
        go.Scatter(x=broken[0], y=broken[1], mode="lines", line=dict(color="#d62728", width=1, dash="dash"),
                   hoverinfo="skip", name="edges without a geodesic"),
        go.Scatter(x=x[inside, 0], y=x[inside, 1], mode="markers", text=[t for t, i in zip(text, inside, strict=True) if i],
                   hoverinfo="text", name="nodes", marker=dict(size=8, color=[d for d, i in zip(depth, inside, strict=True) if i],
                                                               colorscale="Viridis", cmin=0, cmax=max(depth) or 1)),
        go.Scatter(x=x[~inside, 0], y=x[~inside, 1], mode="markers",
                   text=[t for t, i in zip(text, inside, strict=True) if not i], hoverinfo="text",
                   name="outside the disk (norm ≥ 1)", marker=dict(size=12, color="#d62728", symbol="x")),
    ]


def poincare_figure(frames: Sequence[tuple[int, np.ndarray]], names: Sequence[str], depth: Sequence[int],
                    edges: Sequence[tuple[int, int]], title: str = "") -> go.Figure:
    """The Poincare disk with the nodes (coloured by depth) and geodesic edges, animated over ``frames``
    ((step, (n, 2) positions) pairs, in order) with a slider and a play button; the last frame is shown first."""
    if not frames:
        raise ValueError("no positions to draw")
    last_step, last = frames[-1]
    fig = go.Figure(_disk_traces(last, names, depth, edges))
    fig.frames = [go.Frame(data=_disk_traces(x, names, depth, edges), name=str(step)) for step, x in frames]
    fig.add_shape(type="circle", x0=-1, y0=-1, x1=1, y1=1, line=dict(color="black", width=1))
    slider = dict(active=len(frames) - 1, currentvalue=dict(prefix="after step "), pad=dict(t=30), x=0.14, len=0.86,
                  steps=[dict(method="animate", label=str(step), args=[[str(step)], dict(mode="immediate",
                              frame=dict(duration=0, redraw=True), transition=dict(duration=0))]) for step, _ in frames])
    play = dict(type="buttons", showactive=False, x=0.0, y=0.0, xanchor="left", yanchor="top", pad=dict(t=30),
                direction="down", buttons=[
        dict(label="▶ play", method="animate", args=[None, dict(frame=dict(duration=120, redraw=True), fromcurrent=False,
                                                                 transition=dict(duration=0))]),
        dict(label="❚❚ pause", method="animate", args=[[None], dict(mode="immediate", frame=dict(duration=0))])])
    lim = max(1.05, float(np.nanmax(np.abs(np.vstack([x for _, x in frames])))) + 0.05)
    fig.update_layout(title=title or "the tree in the Poincaré disk", height=560, margin=dict(t=40, b=10),
                      sliders=[slider], updatemenus=[play], legend=dict(orientation="h", y=1.02, yanchor="bottom"),
                      xaxis=dict(range=[-lim, lim], visible=False),
                      yaxis=dict(range=[-lim, lim], visible=False, scaleanchor="x"))
    return fig


# ------------------------------------------------------------------------------------------ run records
def recorded_points(extras: Mapping[str, Sequence[float | None]], names: Sequence[str]) -> np.ndarray:
    """(steps, len(names)) array of the values recorded under ``names`` (None -> NaN)."""
    cols = [[math.nan if v is None else float(v) for v in extras.get(n, [])] for n in names]
    return np.array(cols, dtype=float).T if cols and cols[0] else np.zeros((0, len(names)))


def disk_frames(steps: Sequence[int], extras: Mapping[str, Sequence[float | None]], n: int,
                frames: int = 30) -> list[tuple[int, np.ndarray]]:
    """About ``frames`` (step, (n, 2) positions) pairs evenly spread over a Poincare embedding run's records
    (``x{i}``, ``y{i}`` after each update), always with the last finite one; undefined (NaN) positions skipped."""
    xy = recorded_points(extras, [f"{c}{i}" for i in range(n) for c in "xy"]).reshape(-1, n, 2)
    finite = [i for i in range(len(xy)) if np.isfinite(xy[i]).all()]
    if not finite:
        return []
    pick = sorted({finite[int(round(j))] for j in np.linspace(0, len(finite) - 1, min(frames, len(finite)))})
    return [(int(steps[i]), np.round(xy[i], 5)) for i in pick]
