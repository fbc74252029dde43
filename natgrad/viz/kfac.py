"""K-FAC's per-step traces with its safeguards marked: rejected steps and bound hits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from natgrad.viz.figures import trace_title
from natgrad.viz.style import finite, log_decades, on_log

MARKS = {  # stats() flag -> (legend name, marker)
    "rejected": ("rejected step (loss rose; undone, damping x4)", dict(symbol="x", size=9, color="#d62728")),
    "bound": ("bound hit (trust region or momentum interval)", dict(symbol="triangle-up", size=7, color="#ff7f0e")),
}


def _linear(v) -> float | None:
    """A bar on a linear axis: the value, or none for a zero or a value that is not a finite number."""
    return finite(v) or None


def safeguard_trace_figure(step: Sequence[int], traces: Mapping[str, Sequence[float | None]],
                           marks: Mapping[str, Sequence[float | None]], log_y: Sequence[str] = ()) -> go.Figure:
    """Stacked panels sharing the step axis (e.g. damping, rho, alpha, step norm), with a marker on
    every panel at each step where a flag of ``marks`` (``"rejected"``, ``"bound"``: 1.0 or 0.0 per
    step, as ``KFAC.stats()`` records them) is set. Where the traced value is missing or not
    finite (rho of a rejected step whose model predicted no decrease) the marker sits on the
    panel's lowest value."""
    names = list(traces)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=[trace_title(n) for n in names],
                        vertical_spacing=0.1)
    shown = set()
    for r, name in enumerate(names, start=1):
        values = list(traces[name])
        keep = on_log if name in log_y else finite
        pairs = [(s, keep(v)) for s, v in zip(step, values, strict=True) if keep(v) is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines",
                                 line=dict(width=1.5, color="#444"), name=trace_title(name), showlegend=False), row=r, col=1)
        floor = min((p[1] for p in pairs), default=0.0)
        for flag, (legend, marker) in MARKS.items():
            hits = [(s, floor if keep(v) is None else keep(v))
                    for s, v, m in zip(step, values, marks.get(flag, [None] * len(step)), strict=True) if m]
            if not hits:
                continue
            fig.add_trace(go.Scatter(x=[h[0] for h in hits], y=[h[1] for h in hits], mode="markers", marker=marker,
                                     name=legend, legendgroup=flag, showlegend=flag not in shown), row=r, col=1)
            shown.add(flag)
        if name in log_y:
            fig.update_yaxes(type="log", row=r, col=1)
        if name == "rho":
            for level in (0.0, 0.25, 0.75):
                fig.add_hline(y=level, line_dash="dot", line_color="grey", row=r, col=1)
    fig.update_layout(height=210 * len(names) + 60, margin=dict(t=40, b=30), legend=dict(orientation="h", y=-0.08),
                      title="K-FAC's safeguards step by step")
    fig.update_xaxes(title_text="step", row=len(names), col=1)
    return log_decades(fig)


def safeguard_counts(marks: Mapping[str, Sequence[float | None]]) -> dict[str, int]:
    """How many steps had each flag set."""
    return {flag: sum(1 for m in marks.get(flag, []) if m) for flag in MARKS}


PARTS = {"statistics": "#636363", "inverses": "#e7969c", "apply": "#6baed6"}  # cost parts, not methods


def layer_cost_figure(rows: Sequence[Mapping[str, float | str]], log: bool = True) -> go.Figure:
    """Bars, one group per layer: FLOPs per step of the factor statistics, the inverses (both
    amortised over their refresh intervals) and applying the preconditioner: side by side on a
    log axis, stacked on a linear one. A part that costs nothing has no bar (never a bar of 1 on the log axis)."""
    fig = go.Figure()
    for part, color in PARTS.items():
        fig.add_trace(go.Bar(x=[str(r["layer"]) for r in rows], y=[on_log(r[part]) if log else _linear(r[part]) for r in rows],
                             name=part, marker_color=color))
    # stacked on a linear axis; side by side on a log axis, where stacked parts would not read as sums
    fig.update_layout(barmode="group" if log else "stack", yaxis_title="FLOPs per step (amortised)", xaxis_title="layer",
                      title="K-FAC's extra FLOPs per step, by layer", height=360, margin=dict(t=50, b=30),
                      legend=dict(orientation="h", y=-0.25))
    if log:
        fig.update_yaxes(type="log")
        return log_decades(fig)
    fig.update_yaxes(exponentformat="power")
    return fig
