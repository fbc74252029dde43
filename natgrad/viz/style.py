"""What every figure of the course shares: one colour per optimizer or method name, log axes
labelled by decades, byte axes in the units the tables use, readable hyper-parameters.

Colours: a name means one colour in every chart (a loss curve, a bar of time per step, a
cosine bar); the colour is chosen by the longest entry of :data:`COLORS` that starts the
label, so "K-FAC (previous run)" is K-FAC's red. Names that are not in the map (layers,
parts of a cost) take colours from :data:`SPARE`, which no named method uses.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np
import plotly.graph_objects as go

COLORS = {
    # optimizers
    "K-FAC": "#d62728",
    "Adam": "#1f77b4",
    "AdamW": "#17becf",
    "SGD": "#2ca02c",
    "SGD+momentum": "#2ca02c",  # the course's SGD always has momentum: the same method
    "Shampoo": "#9467bd",
    "Sophia": "#ff7f0e",
    "Sophia-G": "#ff7f0e",  # Sophia's default estimator: the same method
    "Sophia-H": "#8c564b",
    "SOAP": "#e377c2",
    "Muon": "#bcbd22",
    "torch.optim.Muon": "#bcbd22",
    "Newton": "#7f7f7f",
    # variants that are one of the above with another exponent
    "exponent -1/4": "#9467bd",  # Shampoo's default exponent, in Shampoo's colour
    "exponent -1/2": "#6a3d9a",
    "Shampoo -1/4": "#9467bd",
    "Shampoo -1/2": "#6a3d9a",
    "power −1/2": "#1f77b4",  # Adam's power: Adam's colour
    "power −1 ": "#843c39",  # the diagonal natural gradient
    "diagonal Fisher": "#843c39",
    "Adam / RMSprop": "#1f77b4",
    # exact references
    "natural gradient": "#000000",
    "full natural gradient": "#000000",
    "U V^T": "#000000",
    # on manifolds
    "Riemannian SGD": "#8c6d31",
    "Riemannian Adam": "#7b4173",
    "projected Adam": "#393b79",
    "projected GD": "#637939",
}
PREVIOUS = "(previous run)"  # a run label ending so is drawn dashed: the learner's run before this one


def dash_of(label: str) -> str:
    """Dashed for the learner's previous run, solid for this one."""
    return "dash" if PREVIOUS in label else "solid"


SPARE = ("#a1a1a1", "#c49c94", "#9edae5", "#dbdb8d", "#f7b6d2", "#aec7e8", "#ffbb78", "#98df8a")
_BY_LENGTH = sorted(COLORS, key=len, reverse=True)


def color_of(label: str, i: int = 0) -> str:
    """The colour of the method named at the start of ``label``, else the ``i``-th spare colour."""
    for name in _BY_LENGTH:
        if label.startswith(name):
            return COLORS[name]
    return SPARE[i % len(SPARE)]


def recolor(fig: go.Figure) -> go.Figure:
    """Give every trace of ``fig`` the colour of the method its name starts with."""
    for i, trace in enumerate(fig.data):
        color = color_of(trace.name or "", i)
        if getattr(trace, "line", None) is not None:
            trace.line.color = color
        if getattr(trace, "marker", None) is not None and trace.type != "bar":
            trace.marker.color = color
    return fig


# ----------------------------------------------------------------------------------------- axes
def _axis_values(fig: go.Figure, axis: str) -> list[float]:
    """Every finite positive number drawn against ``axis`` (a layout name such as ``yaxis2``)."""
    letter, suffix = axis[0], axis[5:]
    ref = letter + suffix  # "y2"
    out: list[float] = []
    for t in fig.data:
        if (getattr(t, f"{letter}axis", None) or letter) != ref:
            continue
        values = getattr(t, letter, None)
        if values is None:
            continue
        for v in np.asarray(values, dtype=object).ravel():
            if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)) and float(v) > 0:
                out.append(float(v))
    return out


def log_decades(fig: go.Figure) -> go.Figure:
    """Label every log axis of ``fig`` by whole decades (10⁻³, 10⁻², ...) with no "2" and "5" in
    between, when its data span at least a decade; a narrower log axis keeps plotly's ticks, in
    plain numbers, so that it is never left without a label."""
    for name in list(fig.layout):
        if not (name.startswith("xaxis") or name.startswith("yaxis")):
            continue
        axis = fig.layout[name]
        if axis.type != "log":
            continue
        axis.update(**decade_ticks(_axis_values(fig, name)))
    return fig


BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def byte_unit(largest: float) -> tuple[str, float]:
    """The SI unit in which ``largest`` bytes reads best (as :func:`natgrad.costs.human_bytes`
    writes tables) and its size in bytes: 4.1e9 -> ("GB", 1e9)."""
    power = 0
    while power < len(BYTE_UNITS) - 1 and abs(largest) >= 1000 ** (power + 1):
        power += 1
    return BYTE_UNITS[power], 1000.0**power


def log_byte_ticks(values: Iterable[float]) -> dict:
    """Axis settings for a log axis of bytes: one tick per decade, written in SI units
    ("10 GB", "100 MB"), never plotly's "10B" (which means ten billion)."""
    vals = [v for v in values if v and v > 0 and math.isfinite(v)]
    if not vals:
        return {}
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    ticks = [10.0**k for k in range(lo, hi + 1)]
    texts = []
    for t in ticks:
        unit, size = byte_unit(t)
        texts.append(f"{t / size:g} {unit}")
    return dict(tickvals=ticks, ticktext=texts)


HPARAM_NAMES = {"lr": "learning rate", "rho": "γ", "damping": "damping λ", "weight_decay": "weight decay",
                "momentum": "momentum", "update_period": "refresh every", "epsilon": "ε", "betas": "β",
                "exponent_override": "exponent −1/"}


def wrap_title(text: str, width: int = 36) -> str:
    """``text`` broken into lines of at most about ``width`` characters at spaces (``<br>``), as plotly never
    wraps a title: a long one was cut off at a phone's width."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def finite(v: object) -> float | None:
    """``v`` as a float when it is a finite number (numpy scalars included, bools not); else None, a gap in a
    plotly line."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def on_log(v: object) -> float | None:
    """``v`` as a float where a log axis can draw it (a finite number > 0); else None, a gap in a plotly line.
    (plotly.js draws a value <= 0 far below a log axis, as a line diving off the plot.)"""
    x = finite(v)
    return x if x is not None and x > 0 else None


def decade_ticks(values: Iterable[float], most: int = 12) -> dict:
    """Axis settings for a log axis over ``values``: a tick every decade, or every 2nd, 5th, 10th ... decade so
    that there are at most about ``most`` ticks (1e-300 to 1e300 had 600), when the values span at least a
    decade; else plotly's own ticks. Exponents written as powers either way."""
    vals = [x for x in map(on_log, values) if x is not None]
    if not vals or max(vals) / min(vals) < 10:
        return dict(exponentformat="power")
    span = math.log10(max(vals)) - math.log10(min(vals))  # (their ratio can overflow)
    step = next((s for s in (1, 2, 3, 5, 10, 20, 50, 100) if span / s <= most), 200)
    return dict(dtick=step, exponentformat="power", minor=dict(ticks="", showgrid=False))


def _real(v: object) -> bool:
    """A float of any kind (numpy's float32 included), not an int or a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)


def hparams_text(hparams: Mapping[str, object], keys: Iterable[str] | None = None) -> str:
    """Hyper-parameters in words for a legend, 3 significant digits: ``{'lr': 0.00588, 'damping': 0.1}``
    -> "learning rate 0.00588, damping λ 0.1" (never a Python dict). ``keys``: only these, in this order."""
    chosen = [k for k in keys if k in hparams] if keys is not None else list(hparams)
    parts = []
    for k in chosen:
        v = hparams[k]
        if _real(v):
            v = f"{v:.3g}"
        elif isinstance(v, (list, tuple)):
            v = ", ".join(f"{x:.3g}" if _real(x) else str(x) for x in v)
            v = f"({v})"
        name = HPARAM_NAMES.get(k, k.replace("_", " "))
        parts.append(f"{name}{v}" if name.endswith("/") else f"{name} {v}")
    return ", ".join(parts)
