"""Plotly figure builders used by the labs (K-FAC, damping, Shampoo, sharding)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {
    "K-FAC": "#d62728",
    "Adam": "#1f77b4",
    "SGD+momentum": "#2ca02c",
    "Shampoo": "#9467bd",
    "Sophia": "#ff7f0e",
    "SOAP": "#e377c2",
    "Muon": "#bcbd22",
    "SGD": "#2ca02c",
    "exponent -1/4": "#9467bd",  # Shampoo's default exponent, in Shampoo's colour
    "exponent -1/2": "#17becf",
}


def color_of(label: str, i: int = 0) -> str:
    """The fixed colour of an optimizer named at the start of ``label``, else the ``i``-th spare colour."""
    return _color(label, i)


def _color(label: str, i: int) -> str:
    for name, c in COLORS.items():
        if label.startswith(name):
            return c
    palette = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    return palette[i % len(palette)]


def loss_figure(trajectories: Mapping[str, object], x: str = "step", title: str = "") -> go.Figure:
    """Loss (log scale) against steps or seconds, one line per labelled trajectory.

    Each trajectory needs ``.step``, ``.seconds``, ``.loss`` and ``.status``;
    a diverged run ends with an ``x`` marker.
    """
    fig = go.Figure()
    for i, (label, t) in enumerate(trajectories.items()):
        xs = t.step if x == "step" else t.seconds
        ys = [v if math.isfinite(v) and v > 0 else None for v in t.loss]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=label, line=dict(color=_color(label, i), width=2)))
        if t.status == "diverged" and xs:
            fig.add_trace(go.Scatter(x=[xs[-1]], y=[next((v for v in reversed(ys) if v), None)], mode="markers",
                                     marker=dict(symbol="x", size=12, color=_color(label, i)),
                                     name=f"{label} diverged", showlegend=False))
    fig.update_layout(title=title or None, xaxis_title="step" if x == "step" else "seconds (wall clock)",
                      yaxis_title="training loss", yaxis_type="log", height=380, margin=dict(t=40, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def traces_figure(step: Sequence[int], traces: Mapping[str, Sequence[float | None]], log_y: Sequence[str] = ()) -> go.Figure:
    """Stacked panels sharing the step axis, e.g. damping and the reduction ratio rho."""
    names = list(traces)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names, vertical_spacing=0.12)
    for r, name in enumerate(names, start=1):
        pairs = [(s, v) for s, v in zip(step, traces[name], strict=True) if v is not None and math.isfinite(v)]
        fig.add_trace(go.Scatter(x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines+markers",
                                 marker=dict(size=4), name=name, showlegend=False), row=r, col=1)
        if name in log_y:
            fig.update_yaxes(type="log", row=r, col=1)
        if name == "rho":
            for level in (0.25, 0.75):
                fig.add_hline(y=level, line_dash="dot", line_color="grey", row=r, col=1)
    fig.update_layout(height=220 * len(names), margin=dict(t=40, b=30))
    fig.update_xaxes(title_text="step", row=len(names), col=1)
    return fig


def fisher_figure(matrices: Mapping[str, np.ndarray], errors: Mapping[str, float] | None = None,
                  boundaries: Sequence[int] = ()) -> go.Figure:
    """Heatmaps side by side of curvature matrices on a shared signed-log colour scale.

    ``boundaries`` are the parameter indices where a new layer starts; thin
    lines mark the layer blocks. Values are shown as sign(x)·log10(1 + |x|/s)
    with s a small scale, so both large diagonal and small off-diagonal entries
    stay visible.
    """
    errors = errors or {}
    names = list(matrices)
    titles = [f"{n}<br>rel. error {errors[n]:.3f}" if n in errors else n for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.04)
    scale = max(float(np.abs(matrices[names[0]]).max()) * 1e-4, 1e-30)
    zmax = max(float(np.abs(np.log10(1 + np.abs(m) / scale)).max()) for m in matrices.values())
    for c, name in enumerate(names, start=1):
        m = np.asarray(matrices[name], dtype=float)
        z = np.sign(m) * np.log10(1 + np.abs(m) / scale)
        fig.add_trace(go.Heatmap(z=z, zmin=-zmax, zmax=zmax, colorscale="RdBu_r", showscale=c == len(names),
                                 hovertemplate="row %{y}, col %{x}<extra></extra>"), row=1, col=c)
        for b in boundaries:
            for kw in (dict(x0=b - 0.5, x1=b - 0.5, y0=-0.5, y1=m.shape[0] - 0.5),
                       dict(y0=b - 0.5, y1=b - 0.5, x0=-0.5, x1=m.shape[1] - 0.5)):
                fig.add_shape(type="line", line=dict(color="black", width=0.6), row=1, col=c, **kw)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c,
                         showticklabels=False)
        fig.update_xaxes(showticklabels=False, row=1, col=c)
    fig.update_layout(height=420, margin=dict(t=70, b=10, l=10, r=10))
    return fig


def cost_figure(rows: Sequence[dict], value: str, title: str) -> go.Figure:
    """Log-scale bars of one cost (``value`` key) per representation."""
    names = [r["name"] for r in rows]
    vals = [max(float(r[value]), 1.0) for r in rows]
    fig = go.Figure(go.Bar(x=names, y=vals, text=[r.get(f"{value}_text", f"{v:.3g}") for r, v in zip(rows, vals, strict=True)],
                           textposition="outside", marker_color=["#7f7f7f", "#d62728", "#1f77b4"][: len(rows)]))
    fig.update_layout(title=title, yaxis_type="log", height=320, margin=dict(t=50, b=30))
    return fig


def rank_bars_figure(parts: Mapping[str, Sequence[float]], title: str, yaxis_title: str,
                     level: float | None = None, level_name: str = "", text: Sequence[str] | None = None) -> go.Figure:
    """Stacked bars, one bar per rank (``parts`` maps a component name to its per-rank
    values), with an optional dashed horizontal ``level`` (e.g. total / ranks) named
    ``level_name`` in the legend.

    ``text`` labels the top of each bar (e.g. human-readable bytes).
    """
    names = list(parts)
    ranks = len(parts[names[0]]) if names else 0
    x = [f"rank {r}" for r in range(ranks)]
    fig = go.Figure()
    for i, name in enumerate(names):
        last = i == len(names) - 1
        fig.add_trace(go.Bar(x=x, y=list(parts[name]), name=name, marker_color=_color(name, i),
                             text=list(text) if last and text is not None else None,
                             textposition="outside" if last and text is not None else None))
    if level is not None:  # the line, and a legend entry naming it (an annotation would collide with the bar labels)
        fig.add_hline(y=level, line_dash="dash", line_color="black")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=level_name,
                                 line=dict(dash="dash", color="black")))
    fig.update_layout(barmode="stack", title=title, yaxis_title=yaxis_title, height=340, margin=dict(t=50, b=30),
                      legend=dict(orientation="h", y=-0.15))
    return fig
