"""Plotly figure builders used by the labs (K-FAC, damping, Shampoo, sharding)."""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from natgrad.viz.style import (
    COLORS,
    PREVIOUS,
    byte_unit,
    color_of,
    dash_of,
    decade_ticks,
    finite,
    log_byte_ticks,
    log_decades,
    on_log,
)

__all__ = ["COLORS", "PREVIOUS", "color_of", "cost_figure", "costs_figure", "fisher_figure", "fisher_panels", "loss_figure", "rank_bars_figure",
           "traces_figure", "TRACE_TITLES"]

def _color(label: str, i: int) -> str:
    return color_of(label, i)


def loss_figure(trajectories: Mapping[str, object], x: str = "step", title: str = "") -> go.Figure:
    """Loss (log scale) against steps or seconds, one line per labelled trajectory.

    Each trajectory needs ``.step``, ``.seconds``, ``.loss`` and ``.status``;
    a diverged run ends with an ``x`` marker. A label containing :data:`PREVIOUS` is drawn
    dashed in its method's colour (the learner's previous run, for comparison).
    """
    fig = go.Figure()
    for i, (label, t) in enumerate(trajectories.items()):
        xs = t.step if x == "step" else t.seconds
        ys = [on_log(v) for v in t.loss]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=label,
                                 line=dict(color=_color(label, i), width=2, dash=dash_of(label))))
        if t.status == "diverged" and len(xs):  # (numpy arrays have no truth value)
            fig.add_trace(go.Scatter(x=[xs[-1]], y=[next((v for v in reversed(ys) if v), None)], mode="markers",
                                     marker=dict(symbol="x", size=12, color=_color(label, i)),
                                     name=f"{label} diverged", showlegend=False))
    default = "training loss against steps" if x == "step" else "training loss against wall-clock time"
    fig.update_layout(title=title or default, xaxis_title="step" if x == "step" else "seconds (wall clock)",
                      yaxis_title="training loss", yaxis_type="log", height=380, margin=dict(t=40, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return log_decades(fig)


TRACE_TITLES = {  # a recorded statistic -> its name in words with its symbol
    "damping": "damping λ",
    "rho": "reduction ratio ρ = actual/predicted",  # (short enough for a phone's width)
    "alpha": "step size α",
    "step_norm": "step norm ‖Δθ‖",
    "mu": "momentum μ",
    "clipped_fraction": "fraction of coordinates clipped",
}


def trace_title(name: str) -> str:
    """How a panel of a recorded statistic is titled: in words with its symbol, never the raw name."""
    return TRACE_TITLES.get(name, name.replace("_", " "))


def traces_figure(step: Sequence[int], traces: Mapping[str, Sequence[float | None]], log_y: Sequence[str] = ()) -> go.Figure:
    """Stacked panels sharing the step axis, e.g. damping and the reduction ratio rho."""
    names = list(traces)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=[trace_title(n) for n in names],
                        vertical_spacing=0.12)
    for r, name in enumerate(names, start=1):
        keep = on_log if name in log_y else finite
        pairs = [(s, keep(v)) for s, v in zip(step, traces[name], strict=True) if keep(v) is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines+markers",
                                 marker=dict(size=4), name=trace_title(name), showlegend=False), row=r, col=1)
        if name in log_y:
            fig.update_yaxes(type="log", row=r, col=1)
        if name == "rho":
            for level in (0.25, 0.75):
                fig.add_hline(y=level, line_dash="dot", line_color="grey", row=r, col=1)
    fig.update_layout(height=220 * len(names), margin=dict(t=40, b=30))
    fig.update_xaxes(title_text="step", row=len(names), col=1)
    return log_decades(fig)


# ------------------------------------------------------------------------------------ Fisher heatmaps
def _signed_log_scale(matrices: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(s, zmax): entries are drawn as sign(x) log10(1 + |x|/s), s = 1e-4 of the first matrix's largest
    finite entry (non-finite entries are left out of both: they are drawn grey)."""
    arrays = [np.asarray(m, dtype=float) for m in matrices.values()]
    if not arrays or any(a.ndim != 2 or a.size == 0 for a in arrays):
        raise ValueError("each matrix to draw must be 2-D and not empty")

    def largest(a: np.ndarray) -> float:
        finite = np.abs(a[np.isfinite(a)])
        return float(finite.max()) if finite.size else 0.0

    scale = max(largest(arrays[0]) * 1e-4, 1e-30)
    zmax = max(float(np.log10(1 + largest(a) / scale)) for a in arrays)
    return scale, max(zmax, 1e-12)


LEVELS = 254  # colour levels of a heatmap: 0 .. LEVELS, LEVELS / 2 is a zero entry
NOT_FINITE = 255  # the level (grey) of a NaN or infinite entry
NOT_FINITE_RGB = (128, 128, 128)


def _level(z: np.ndarray | float, zmax: float) -> np.ndarray:
    """Signed-log values in [-zmax, zmax] -> colour levels 0 .. LEVELS (uint8); NaN or inf -> NOT_FINITE."""
    z = np.asarray(z, dtype=float)
    finite = np.isfinite(z)
    levels = np.full(z.shape, NOT_FINITE, dtype=np.uint8)
    levels[finite] = np.rint((np.clip(z[finite], -zmax, zmax) + zmax) / (2 * zmax) * LEVELS).astype(np.uint8)
    return levels


def _colorbar(scale: float, zmax: float) -> dict:
    """A colour bar titled in words whose ticks show the entries' real values (not their logarithms),
    placed at the colour levels of the signed-log values k = ..., -1, 0, 1, ..."""
    ks = list(range(-int(math.floor(zmax)), int(math.floor(zmax)) + 1, 2 if zmax > 4 else 1))
    text = [("0" if k == 0 else f"{'−' if k < 0 else ''}{scale * (10 ** abs(k) - 1):.2g}") for k in ks]
    return dict(title=dict(text="entry<br>(signed<br>log scale)", side="top"),
                tickvals=[(k + zmax) / (2 * zmax) * LEVELS for k in ks], ticktext=text, thickness=12, len=0.9)


def _layer_ticks(size: int, boundaries: Sequence[int], layer_names: Sequence[str] | None) -> dict:
    """Axis ticks naming each block of parameters ("layer 1", 0–159) at its centre."""
    edges = [0, *[b for b in boundaries if 0 < b < size], size]
    names = list(layer_names) if layer_names else [f"layer {i + 1}" for i in range(len(edges) - 1)]
    if len(edges) == 2 and not layer_names:
        return {}  # one block: plain parameter indices
    centres = [(a + b - 1) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    text = [f"{n}<br>{a}–{b - 1}" for n, a, b in zip(names, edges, edges[1:], strict=False)]
    return dict(tickvals=centres, ticktext=text, tickangle=0)


COLORSCALE = "RdBu_r"


def _png(levels: np.ndarray, palette: np.ndarray) -> bytes:
    """An 8-bit indexed-colour PNG file: pixel (i, j) has colour ``palette[levels[i, j]]``.

    ``levels``: (h, w) uint8; ``palette``: (n, 3) uint8, n <= 256. One byte a pixel instead of RGB's three:
    the exact Fisher of the K-FAC lab (444 x 444) takes 145 kB instead of 231 kB. Rows unfiltered, deflated by zlib.
    """
    h, w = levels.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), levels.astype(np.uint8)], axis=1)  # filter byte 0: none

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)  # 8 bits per pixel, colour type 3: palette
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _palette() -> np.ndarray:
    """(LEVELS + 2, 3) uint8: the colour of each level, as plotly draws the colour scale, then grey for
    NOT_FINITE."""
    colours = plotly.colors.sample_colorscale(COLORSCALE, [k / LEVELS for k in range(LEVELS + 1)], colortype="tuple")
    return np.vstack([np.rint(np.asarray(colours) * 255), [NOT_FINITE_RGB]]).astype(np.uint8)


def _heatmap(m: np.ndarray, scale: float, zmax: float, showscale: bool, name: str) -> list:
    """The matrix as an image (a PNG of its colour levels, one pixel per entry) and, when ``showscale``,
    an empty scatter that carries the shared colour bar.

    A 444 x 444 plotly heatmap made the browser colour 197,000 cells one by one and carry their hover
    values: the K-FAC page's three of them took about 1 s to draw. The browser decodes a PNG (indexed
    colours: 145 kB for that matrix) at once; the hover names the row and column, the colour bar the value.
    """
    with np.errstate(invalid="ignore"):  # NaN and inf entries become NOT_FINITE (grey)
        levels = _level(np.sign(m) * np.log10(1 + np.abs(m) / scale), zmax)
    source = "data:image/png;base64," + base64.b64encode(_png(levels, _palette())).decode("ascii")
    traces = [go.Image(source=source, name=name, hovertemplate="row %{y}, column %{x}<extra></extra>")]
    if showscale:
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(color=[0, LEVELS], cmin=0, cmax=LEVELS, colorscale=COLORSCALE,
                                             showscale=True, colorbar=_colorbar(scale, zmax))))
    return traces


def _grey_note(m) -> str:
    """A title's note that grey pixels are NaN or infinite entries, when there are any."""
    return "" if np.isfinite(np.asarray(m, dtype=float)).all() else "<br>(grey: not a finite number)"


def _boundary_lines(fig: go.Figure, m: np.ndarray, boundaries: Sequence[int], **where) -> None:
    for b in boundaries:
        for kw in (dict(x0=b - 0.5, x1=b - 0.5, y0=-0.5, y1=m.shape[0] - 0.5),
                   dict(y0=b - 0.5, y1=b - 0.5, x0=-0.5, x1=m.shape[1] - 0.5)):
            fig.add_shape(type="line", line=dict(color="black", width=0.6), **where, **kw)


def fisher_panels(matrices: Mapping[str, np.ndarray], errors: Mapping[str, float] | None = None,
                  boundaries: Sequence[int] = (), layer_names: Sequence[str] | None = None) -> list[go.Figure]:
    """One square heatmap figure per curvature matrix, on one shared signed-log colour scale
    (so that they can be laid side by side on a wide screen and stacked on a phone).

    Both axes are the parameter index, grouped into the blocks that start at ``boundaries``
    and named by ``layer_names`` (default "layer 1", "layer 2", ...); thin lines mark the
    blocks. Values are shown as sign(x)·log10(1 + |x|/s) with s = 10⁻⁴ of the first
    matrix's largest entry, so that large diagonal and small off-diagonal entries stay
    visible; the colour bar (on the last panel) is labelled with the entries' real values.
    """
    errors = errors or {}
    scale, zmax = _signed_log_scale(matrices)
    figs = []
    names = list(matrices)
    for i, name in enumerate(names):
        m = np.asarray(matrices[name], dtype=float)
        fig = go.Figure(_heatmap(m, scale, zmax, showscale=i == len(names) - 1, name=name))
        n = m.shape[0]
        _boundary_lines(fig, m, boundaries)
        ticks = _layer_ticks(m.shape[0], boundaries, layer_names)
        title = (f"{name}<br>relative error {errors[name]:.1%}" if name in errors else name) + _grey_note(m)
        fig.update_xaxes(title_text="parameter index (column)", constrain="domain", range=[-0.5, m.shape[1] - 0.5],
                         showgrid=False, zeroline=False, **ticks)
        fig.update_yaxes(title_text="parameter index (row)", range=[n - 0.5, -0.5], scaleanchor="x",
                         constrain="domain", showgrid=False, zeroline=False, **ticks)
        fig.update_layout(title=dict(text=title, font=dict(size=14)), height=400,
                          margin=dict(t=60, b=10, l=10, r=10))
        figs.append(fig)
    return figs


def fisher_figure(matrices: Mapping[str, np.ndarray], errors: Mapping[str, float] | None = None,
                  boundaries: Sequence[int] = (), layer_names: Sequence[str] | None = None) -> go.Figure:
    """The heatmaps of :func:`fisher_panels` side by side in one figure (one shared colour bar)."""
    errors = errors or {}
    names = list(matrices)
    titles = [(f"{n}<br>relative error {errors[n]:.1%}" if n in errors else n) + _grey_note(matrices[n]) for n in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.06)
    scale, zmax = _signed_log_scale(matrices)
    for c, name in enumerate(names, start=1):
        m = np.asarray(matrices[name], dtype=float)
        for trace in _heatmap(m, scale, zmax, showscale=c == len(names), name=name):
            fig.add_trace(trace, row=1, col=c)
        _boundary_lines(fig, m, boundaries, row=1, col=c)
        ticks = _layer_ticks(m.shape[0], boundaries, layer_names)
        n = m.shape[0]
        fig.update_yaxes(range=[n - 0.5, -0.5], scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c,
                         showgrid=False, zeroline=False,
                         title_text="parameter index (row)" if c == 1 else None, **ticks)
        fig.update_xaxes(title_text="parameter index (column)", row=1, col=c, range=[-0.5, m.shape[1] - 0.5],
                         showgrid=False, zeroline=False, **ticks)
    fig.update_layout(height=440, margin=dict(t=70, b=10, l=10, r=10))
    return fig


# ------------------------------------------------------------------------------------------ costs
def cost_figure(rows: Sequence[dict], value: str, title: str, *, log: bool = True,
                bytes_axis: bool | None = None, axis_title: str = "") -> go.Figure:
    """Bars of one cost (``value`` key) per representation (``name`` key), on a log or linear axis.

    A zero cost (a diagonal has nothing to invert) has no bar, only its label "0 (none)" at the
    foot of the axis, never a bar of 1 on a log axis. Bytes (``bytes_axis``, default when
    ``value == "bytes"``) are written in the SI units of the tables (GB = 10⁹ bytes), never
    plotly's "10B".
    """
    fig = go.Figure()
    _cost_panel(fig, rows, value, log=log, bytes_axis=bytes_axis, axis_title=axis_title, label=title)
    fig.update_layout(title=title, height=340, margin=dict(t=50, b=30))
    return fig


def costs_figure(rows: Sequence[dict], panels: Mapping[str, str], title: str, *, log: bool = True,
                 axis_titles: Mapping[str, str] | None = None) -> go.Figure:
    """:func:`cost_figure` of several costs of the same representations side by side, one panel per
    ``panels`` item (cost key -> panel title), in one figure (the browser draws one chart, not one
    per cost)."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels.values()), horizontal_spacing=0.1)
    for col, (value, label) in enumerate(panels.items(), start=1):
        _cost_panel(fig, rows, value, log=log, axis_title=(axis_titles or {}).get(value, ""), label=label,
                    at=dict(row=1, col=col))
    fig.update_layout(title=title, height=360, margin=dict(t=70, b=30))
    return fig


def _cost_panel(fig: go.Figure, rows: Sequence[dict], value: str, *, log: bool, bytes_axis: bool | None = None,
                axis_title: str, label: str, at: dict | None = None) -> None:
    """One cost's bars (and the "0 (none)" labels of zero costs) on ``fig``, or on its subplot ``at``."""
    at = at or {}
    bytes_axis = value == "bytes" if bytes_axis is None else bytes_axis
    names = [r["name"] for r in rows]
    raw = [float(r[value]) for r in rows]
    texts = [("0 (none)" if v == 0 else r.get(f"{value}_text", f"{v:.3g}")) for r, v in zip(rows, raw, strict=True)]
    shown = [v if v > 0 else None for v in raw]
    unit, size = byte_unit(max(raw, default=0.0)) if bytes_axis else ("", 1.0)
    if bytes_axis and not log:
        shown = [None if v is None else v / size for v in shown]
    fig.add_trace(go.Bar(x=names, y=shown, text=texts, textposition="outside", name=label,
                         marker_color=[color_of(n, i) for i, n in enumerate(names)], showlegend=False,
                         cliponaxis=False), **at)
    if bytes_axis:
        axis_title = axis_title or ("memory" if log else f"memory ({unit})")
    fig.update_xaxes(title_text="representation", **at)
    fig.update_yaxes(title_text=axis_title or value, **at)
    if log:
        top = max((v for v in shown if v), default=1.0)
        low = min((v for v in shown if v), default=1.0)
        fig.update_yaxes(type="log", range=[math.log10(low) - 0.5, math.log10(top) + 1.0], **at)
        if bytes_axis:
            fig.update_yaxes(**log_byte_ticks([low / 10, top * 10]), **at)
        else:
            fig.update_yaxes(**decade_ticks([low, top]), **at)
    else:
        fig.update_yaxes(rangemode="tozero", exponentformat="power", **at)
    for i, v in enumerate(shown):  # plotly writes no text for a missing bar: the label stands at the axis's foot
        if v is None:
            fig.add_annotation(x=names[i], y=0, yref="y domain", yanchor="bottom", text=texts[i], showarrow=False,
                               name="zero cost", **at)


def rank_bars_figure(parts: Mapping[str, Sequence[float]], title: str, yaxis_title: str,
                     level: float | None = None, level_name: str = "", text: Sequence[str] | None = None,
                     bytes_axis: bool = False, holder: str = "rank") -> go.Figure:
    """Stacked bars, one bar per rank (``parts`` maps a component name to its per-rank
    values), with an optional dashed horizontal ``level`` (e.g. total / ranks) named
    ``level_name`` in the legend.

    ``text`` labels the top of each bar (e.g. human-readable bytes). With ``bytes_axis`` the
    values are drawn in the SI unit that suits the largest bar ("memory (kB)"). ``holder`` names
    what each bar is ("rank", "GPU").
    """
    names = list(parts)
    ranks = len(parts[names[0]]) if names else 0
    if any(len(parts[n]) != ranks for n in names) or (text is not None and len(text) != ranks):
        raise ValueError(f"every part (and text) needs one value per {holder}: got lengths "
                         f"{[len(parts[n]) for n in names]}" + ("" if text is None else f" and {len(text)}"))
    x = [f"{holder} {r}" for r in range(ranks)]
    size = 1.0
    if bytes_axis:
        totals = [sum(float(parts[n][r]) for n in names) for r in range(ranks)]
        unit, size = byte_unit(max(totals + [level or 0.0], default=0.0))
        yaxis_title = f"{yaxis_title} ({unit})"
    fig = go.Figure()
    for i, name in enumerate(names):
        last = i == len(names) - 1
        fig.add_trace(go.Bar(x=x, y=[float(v) / size for v in parts[name]], name=name, marker_color=_color(name, i),
                             text=list(text) if last and text is not None else None,
                             textposition="outside" if last and text is not None else None))
    if level is not None:  # the line, and a legend entry naming it (an annotation would collide with the bar labels)
        fig.add_hline(y=level / size, line_dash="dash", line_color="black")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=level_name,
                                 line=dict(dash="dash", color="black")))
    fig.update_layout(barmode="stack", title=title, yaxis_title=yaxis_title, xaxis_title="rank (process)" if holder == "rank" else holder,
                      height=340, margin=dict(t=50, b=30), legend=dict(orientation="h", y=-0.2))
    return fig
