"""Figures of the optimizer race: loss against steps and against seconds on linked axes,
and the time each optimizer takes per step."""

from __future__ import annotations

import math
from collections.abc import Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from natgrad.viz.style import color_of, dash_of, log_decades, on_log, wrap_title


def race_figure(trajectories: Mapping[str, object], title: str = "") -> go.Figure:
    """Two panels sharing the (log) loss axis: against steps (left) and against wall-clock
    seconds (right), one colour per run in both; zooming the loss in one zooms the other.
    A run's curve is its whole-data evaluations when it has them (``curve()``), a diverged
    run ends in an ``x``."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("against steps", "against seconds"))  # (short: side by side on a phone)
    for i, (name, t) in enumerate(trajectories.items()):
        steps, losses, secs = t.curve() if hasattr(t, "curve") else (t.step, t.loss, t.seconds)
        ys = [on_log(v) for v in losses]
        color = color_of(name, i)
        for col, xs in ((1, steps), (2, secs)):
            fig.add_trace(go.Scatter(x=list(xs), y=ys, mode="lines", name=name, legendgroup=name,
                                     showlegend=col == 1, line=dict(color=color, width=2, dash=dash_of(name))), row=1, col=col)
            if t.status == "diverged" and len(xs):  # (numpy arrays have no truth value)
                fig.add_trace(go.Scatter(x=[xs[-1]], y=[next((v for v in reversed(ys) if v), None)], mode="markers",
                                         marker=dict(symbol="x", size=12, color=color), legendgroup=name,
                                         showlegend=False, name=f"{name} diverged"), row=1, col=col)
    # both panels log: the shared axis is dropped by plotly (and the right panel drawn linear) when their types differ
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_yaxes(title_text="training loss (log scale)", row=1, col=1)
    fig.update_xaxes(title_text="seconds (wall clock)", row=1, col=2)
    fig.update_layout(title=wrap_title(title or "the race"), height=420, margin=dict(t=70, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return log_decades(fig)


def step_time_figure(ms_per_step: Mapping[str, float]) -> go.Figure:
    """Milliseconds per training step (forward, backward and update), one bar per run."""
    names = list(ms_per_step)
    vals = [ms_per_step[n] if math.isfinite(ms_per_step[n]) else None for n in names]
    fig = go.Figure(go.Bar(x=names, y=vals, marker_color=[color_of(n, i) for i, n in enumerate(names)],
                           text=[f"{v:.1f} ms" if v is not None else "n/a" for v in vals], textposition="outside",
                           name="time per step", showlegend=False, cliponaxis=False))
    fig.update_layout(title="time per step (lower is cheaper)", yaxis_title="milliseconds per step",
                      xaxis_title="optimizer", height=320, margin=dict(t=40, b=30))
    return fig
