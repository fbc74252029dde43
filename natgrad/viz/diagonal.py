"""Figures of the diagonal methods (Adam's second moment, Sophia): scatter of a diagonal
against the Fisher's, contour plots with optimizer paths, clipped fractions over time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from natgrad.viz.figures import _color
from natgrad.viz.style import log_decades


def _positive(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a, np.nan)


def diagonal_scatter_figure(v: np.ndarray, references: Mapping[str, np.ndarray], groups: Sequence[str],
                            correlations: Mapping[str, float], batch_size: int | None = None,
                            y_title: str = "Adam's v̂ₜ") -> go.Figure:
    """One log-log panel per reference diagonal (e.g. empirical and true Fisher), each point a
    parameter coloured by ``groups`` (its layer), with the line y = x and, when ``batch_size``
    is given, y = x / B (what squared batch means of pure noise would give)."""
    names = list(references)
    titles = [f"{y_title} vs diag of the {n}<br>log-log correlation {correlations.get(n, math.nan):.3f}" for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.1)
    layers = list(dict.fromkeys(groups))
    groups = np.asarray(groups)
    y = _positive(np.asarray(v, dtype=float))
    for c, name in enumerate(names, start=1):
        x = _positive(np.asarray(references[name], dtype=float))
        for i, layer in enumerate(layers):
            keep = groups == layer
            fig.add_trace(go.Scattergl(x=x[keep], y=y[keep], mode="markers", name=layer, legendgroup=layer,
                                       showlegend=c == 1, marker=dict(size=4, opacity=0.5, color=_color(layer, i + 2))),
                          row=1, col=c)
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="black", dash="dash"),
                                     name="y = x", showlegend=c == 1), row=1, col=c)
            if batch_size:
                fig.add_trace(go.Scatter(x=[lo, hi], y=[lo / batch_size, hi / batch_size], mode="lines",
                                         line=dict(color="grey", dash="dot"), name=f"y = x / B (B = {batch_size})",
                                         showlegend=c == 1), row=1, col=c)
        fig.update_xaxes(type="log", title_text=f"diag of the {name}", exponentformat="power", row=1, col=c)
        fig.update_yaxes(type="log", title_text=y_title, exponentformat="power", row=1, col=c)
    fig.update_layout(height=430, margin=dict(t=70, b=40), legend=dict(orientation="h", y=-0.25))
    return log_decades(fig)


def contour_paths_figure(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, paths: Mapping[str, np.ndarray],
                         title: str = "", marks: Mapping[str, tuple[float, float]] | None = None,
                         log_levels: bool = True) -> go.Figure:
    """Filled contours of ``values`` (len(ys), len(xs)) with each path (n, 2) drawn as a line with
    markers from its start (circle) to its end (x); ``marks`` names special points (the minimum,
    a saddle). ``log_levels`` colours log10(1 + value - min) so valleys stay visible."""
    z = np.asarray(values, dtype=float)
    shown = np.log10(1 + z - np.nanmin(z)) if log_levels else z
    if np.nanmax(np.abs(shown), initial=0.0) < 1e30:  # colour levels only: float32 halves what the browser gets
        shown = shown.astype(np.float32)
    fig = go.Figure(go.Contour(x=xs, y=ys, z=shown, colorscale="Blues", reversescale=True, ncontours=30,
                               showscale=False, hoverinfo="skip", line=dict(width=0.5)))
    for i, (label, pts) in enumerate(paths.items()):
        pts = np.asarray(pts, dtype=float)
        if not len(pts):
            continue
        color = _color(label, i)
        dash = ("solid", "dash", "dot", "dashdot")[i % 4]  # paths that coincide stay visible
        fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode="lines+markers", name=label,
                                 line=dict(color=color, width=3 - 0.5 * (i % 4), dash=dash),
                                 marker=dict(size=4, color=color)))
        fig.add_trace(go.Scatter(x=[pts[-1, 0]], y=[pts[-1, 1]], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(symbol="x", size=12, color=color, line=dict(width=1, color="white"))))
    first = next((np.asarray(p, dtype=float) for p in paths.values() if len(p)), None)  # an empty path has no start
    if first is not None:
        start = first[0]
        fig.add_trace(go.Scatter(x=[start[0]], y=[start[1]], mode="markers", name="start",
                                 marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=2))))
    for name, (mx, my) in (marks or {}).items():
        fig.add_trace(go.Scatter(x=[mx], y=[my], mode="markers+text", text=[name], textposition="top center",
                                 showlegend=False, marker=dict(symbol="star", size=12, color="gold",
                                                               line=dict(width=1, color="black"))))
    fig.update_layout(title=title or "paths on the contours of the loss", height=460, margin=dict(t=50, b=40),
                      xaxis=dict(range=[float(xs[0]), float(xs[-1])], title="θ₁"),
                      yaxis=dict(range=[float(ys[0]), float(ys[-1])], title="θ₂"), legend=dict(orientation="h", y=-0.15))
    return fig


def fraction_figure(steps: Mapping[str, Sequence[int]], fractions: Mapping[str, Sequence[float | None]],
                    title: str = "fraction of coordinates clipped") -> go.Figure:
    """One line per run of a fraction in [0, 1] against the step (None values skipped)."""
    fig = go.Figure()
    for i, (label, ys) in enumerate(fractions.items()):
        pairs = [(s, v) for s, v in zip(steps[label], ys, strict=True) if v is not None and math.isfinite(v)]
        fig.add_trace(go.Scatter(x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines", name=label,
                                 line=dict(color=_color(label, i), width=2)))
    fig.update_layout(title=title, xaxis_title="step", yaxis=dict(range=[0, 1.02], title="fraction"), height=320,
                      margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig
