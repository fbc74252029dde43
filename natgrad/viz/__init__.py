"""Figures for the labs: pure functions from results to plotly figures.

No state, no I/O, no streamlit. Colours are fixed per optimizer so a learner
sees the same colour for K-FAC on every page.
"""

from natgrad.viz.figures import COLORS, cost_figure, fisher_figure, loss_figure, rank_bars_figure, traces_figure
from natgrad.viz.manifolds import (
    disk_frames,
    poincare_figure,
    recolor,
    recorded_points,
    simplex_steps_figure,
    sphere_figure,
    step_distances_figure,
    stiefel_figure,
    ternary_figure,
)

__all__ = ["COLORS", "cost_figure", "fisher_figure", "loss_figure", "rank_bars_figure", "traces_figure",
           # natgrad.viz.manifolds (the Riemannian lesson)
           "disk_frames", "poincare_figure", "recolor", "recorded_points", "simplex_steps_figure", "sphere_figure",
           "step_distances_figure", "stiefel_figure", "ternary_figure"]
