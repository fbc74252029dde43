"""Figures of the preconditioner lab: each method's direction against the natural gradient
(:func:`natgrad.preconditioners.measure`), at one training step and along training, and the
singular values behind Muon's orthogonalised update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from natgrad.viz.style import color_of, decade_ticks, finite, log_decades, on_log, wrap_title

METRICS = ("cosine with the natural gradient", "relative error (best step length)",
           "condition number of P(F + λI)")


def _color(name: str, i: int) -> str:
    return color_of(name, i)  # the course's one colour per method (natgrad.viz.style.COLORS)


def comparison_figure(measures: Mapping[str, object]) -> go.Figure:
    """Three panels sharing the method axis: cosine, relative error, condition number (log).

    ``measures``: method -> :class:`natgrad.preconditioners.Measure`."""
    names = list(measures)
    # panel titles on short lines: three panels side by side leave each a third of a phone's width
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, subplot_titles=[wrap_title(m, 12) for m in METRICS],
                        horizontal_spacing=0.03)
    colors = [_color(n, i) for i, n in enumerate(names)]
    values = [[m.cosine for m in measures.values()], [m.relative_error for m in measures.values()],
              [finite(m.condition_number) for m in measures.values()]]
    for col, (vals, fmt) in enumerate(zip(values, (".3f", ".3f", ".2g"), strict=True), start=1):
        fig.add_trace(go.Bar(y=names, x=vals, orientation="h", marker_color=colors, showlegend=False,
                             text=[format(v, fmt) if v is not None else "∞" for v in vals], textposition="auto",
                             cliponaxis=False,
                             hovertemplate="%{y}: %{x:" + fmt + "}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(range=[min(0.0, min(values[0]) - 0.05), 1.0], row=1, col=1)
    fig.update_xaxes(range=[0, 1.0], row=1, col=2)
    fig.update_xaxes(type="log", exponentformat="power", row=1, col=3)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="cosine", row=1, col=1)
    fig.update_xaxes(title_text="relative error", row=1, col=2)
    fig.update_xaxes(title_text="κ (log scale)", row=1, col=3)
    fig.update_yaxes(title_text="method", row=1, col=1)
    fig.update_layout(height=150 + 34 * len(names), margin=dict(t=110, b=40, l=10, r=40),
                      title=dict(text=wrap_title("each method's direction against the natural gradient"), font=dict(size=14)))
    fig.update_annotations(font_size=13)  # the panel titles
    log_decades(fig)
    fig.update_xaxes(**decade_ticks(values[2], most=4), row=1, col=3)  # the panel is narrow: fewer ticks
    return fig


def spectrum_figure(measures: Mapping[str, object]) -> go.Figure:
    """The eigenvalues of each P(F + λI), divided by their median, smallest to largest:
    a flat line at 1 is the natural gradient; the spread is what a learning rate must live with."""
    fig = go.Figure()
    for i, (name, m) in enumerate(measures.items()):
        ev = sorted(m.eigenvalues)
        med = ev[len(ev) // 2] if on_log(ev[len(ev) // 2]) else 1.0  # (an eigenvalue <= 0 is left out: a log axis)
        k = len(ev)
        fig.add_trace(go.Scatter(x=[j / max(k - 1, 1) for j in range(k)], y=[on_log(v / med) for v in ev],
                                 mode="lines", name=name, line=dict(color=_color(name, i), width=2)))
    fig.update_layout(title="eigenvalues of P(F + λI), smallest to largest",
                      xaxis_title="eigenvalue rank (fraction of all)", yaxis_title="eigenvalue / median",
                      yaxis_type="log", height=380, margin=dict(t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return log_decades(fig)


def training_figure(steps: Sequence[int], series: Mapping[str, Mapping[str, Sequence[float]]],
                    losses: Sequence[float] | None = None) -> go.Figure:
    """The three metrics along training, one line per method, on a shared step axis
    (``series``: method -> metric name in :data:`METRICS` -> values per step); with
    ``losses``, the training loss on top."""
    rows = ([("training loss", None)] if losses is not None else []) + [(m, m) for m in METRICS]
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=[r[0] for r in rows],
                        vertical_spacing=0.07)
    r0 = 1
    if losses is not None:
        fig.add_trace(go.Scatter(x=list(steps), y=[on_log(v) for v in losses], mode="lines+markers", name="loss", showlegend=False,
                                 line=dict(color="#444444")), row=1, col=1)
        r0 = 2
    for i, (name, metrics) in enumerate(series.items()):
        for r, metric in enumerate(METRICS, start=r0):
            fig.add_trace(go.Scatter(x=list(steps), y=[(on_log if r == len(rows) else finite)(v) for v in metrics[metric]], mode="lines+markers",
                                     name=name, legendgroup=name, showlegend=r == r0,
                                     line=dict(color=_color(name, i), width=2), marker=dict(size=5)), row=r, col=1)
    fig.update_yaxes(type="log", exponentformat="power", row=len(rows), col=1)
    if losses is not None:
        fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="training step (Adam)", row=len(rows), col=1)
    fig.update_layout(height=240 * len(rows), margin=dict(t=40, b=40), legend=dict(orientation="h", y=-0.08))
    return log_decades(fig)


def singular_values_figure(singular_values: Mapping[str, Sequence[float]]) -> go.Figure:
    """Singular values, largest first, of a gradient and of updates built from it."""
    fig = go.Figure()
    for i, (name, sv) in enumerate(singular_values.items()):
        fig.add_trace(go.Scatter(x=list(range(1, len(sv) + 1)), y=[on_log(v) for v in sv], mode="lines+markers",
                                 name=name,
                                 line=dict(color=color_of(name, i), width=2)))
    fig.update_layout(title="singular values, largest first", xaxis_title="index (largest first)",
                      yaxis_title="singular value", yaxis_type="log", height=340, margin=dict(t=40, b=40),
                      legend=dict(orientation="h", y=-0.3))
    return log_decades(fig)
