"""Figures for the labs: pure functions from results to plotly figures.

No state, no I/O, no streamlit. Colours are fixed per optimizer so a learner
sees the same colour for K-FAC on every page (:mod:`natgrad.viz.style`).
"""

from natgrad.viz.diagonal import contour_paths_figure, diagonal_scatter_figure, fraction_figure
from natgrad.viz.figures import (
    PREVIOUS,
    cost_figure,
    costs_figure,
    fisher_figure,
    fisher_panels,
    loss_figure,
    rank_bars_figure,
    trace_title,
    traces_figure,
)
from natgrad.viz.kfac import layer_cost_figure, safeguard_counts, safeguard_trace_figure
from natgrad.viz.manifolds import (
    disk_frames,
    poincare_figure,
    recorded_points,
    simplex_steps_figure,
    sphere_figure,
    step_distances_figure,
    stiefel_figure,
    ternary_figure,
)
from natgrad.viz.style import COLORS, byte_unit, color_of, hparams_text, log_decades, recolor

__all__ = ["COLORS", "PREVIOUS", "cost_figure", "costs_figure", "fisher_figure", "fisher_panels", "loss_figure", "rank_bars_figure",
           "trace_title", "traces_figure",
           # natgrad.viz.style (one colour per method, decades on log axes, bytes in SI units)
           "byte_unit", "color_of", "hparams_text", "log_decades", "recolor",
           # natgrad.viz.diagonal (Adam's and Sophia's diagonals, lessons 1 and 6)
           "contour_paths_figure", "diagonal_scatter_figure", "fraction_figure",
           # natgrad.viz.kfac (K-FAC's per-layer cost and safeguards)
           "layer_cost_figure", "safeguard_counts", "safeguard_trace_figure",
           # natgrad.viz.manifolds (the Riemannian lesson)
           "disk_frames", "poincare_figure", "recorded_points", "simplex_steps_figure", "sphere_figure",
           "step_distances_figure", "stiefel_figure", "ternary_figure"]
