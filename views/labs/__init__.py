"""Lab renderers by lab id.

A lesson's ``lesson.yaml`` lists its labs; a lab whose id has a renderer here is
drawn by it, any other gets an honest "not built yet" frame. A renderer takes
the :class:`course.lessons.Lab` and draws widgets and figures by calling
``natgrad``.

Each renderer is registered as an ``st.fragment`` around
:func:`views.labs.common.render_lab`: a widget of one lab reruns that lab
alone, not the page with its text, questions and other labs. Inside that frame
every renderer is framed the same way (:func:`framed`): the lab's
"predict, then run" question first, then the lab, whose figures carry the
lesson's captions, then the learner's prediction again and the downloads.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from course.lessons import Lab
from views.labs import (
    adam,
    damping,
    figures,
    hyperbolic,
    kfac,
    preconditioners,
    predict,
    race,
    riemannian,
    shampoo,
    sharding,
    sophia,
)
from views.labs.common import render_lab


def framed(render: Callable[[Lab], None]) -> Callable[[Lab], None]:
    """``render`` with the prediction question before it and the downloads after it."""

    def draw(lab: Lab) -> None:
        with figures.lab_context(lab) as state:
            predict.block(lab)
            render(lab)
            if state.figures:
                predict.reminder(lab)
            figures.downloads()

    draw.__name__ = getattr(render, "__name__", "lab")
    draw.__wrapped__ = render
    return draw


def _fragment(render: Callable[[Lab], None]) -> Callable[[Lab], None]:
    """``render``, framed, as a fragment behind :func:`render_lab`'s error handling."""
    inner = framed(render)

    def lab_fragment(lab: Lab) -> None:
        render_lab(lab, inner)

    lab_fragment.__name__ = lab_fragment.__qualname__ = f"lab_{render.__name__}"
    lab_fragment.__wrapped__ = render
    return st.fragment(lab_fragment)


RENDERERS: dict[str, Callable[[Lab], None]] = {
    "adam-vs-fisher": adam.adam_vs_fisher,
    "fisher-blocks": kfac.fisher_blocks,
    "kfac-training": kfac.kfac_training,
    "kfac-cost": kfac.kfac_cost,
    "damping-lab": damping.damping_lab,
    "why-quarter": shampoo.why_quarter,
    "shampoo-vs-kfac": shampoo.shampoo_vs_kfac,
    "shampoo-memory": shampoo.shampoo_memory,
    "sharding": sharding.sharding,
    "preconditioner-lab": preconditioners.preconditioner_lab,
    "muon-shampoo": preconditioners.muon_check,
    "optimizer-race": race.optimizer_race,
    "retractions": riemannian.retractions,
    "stiefel-practice": riemannian.stiefel_practice,
    "simplex-natural-gradient": hyperbolic.simplex_fit,
    "hyperbolic-embedding": hyperbolic.hyperbolic_embedding,
    "sophia-clipping": sophia.sophia_clipping,
}

LABS: dict[str, Callable[[Lab], None]] = {lab_id: _fragment(render) for lab_id, render in RENDERERS.items()}
