"""Lab renderers by lab id.

A lesson's ``lesson.yaml`` lists its labs; a lab whose id has a renderer here is
drawn by it, any other gets an honest "not built yet" frame. A renderer takes
the :class:`course.lessons.Lab` and draws widgets and figures by calling
``natgrad``.
"""

from __future__ import annotations

from collections.abc import Callable

from course.lessons import Lab
from views.labs import damping, hyperbolic, kfac, preconditioners, race, riemannian, shampoo, sharding

LABS: dict[str, Callable[[Lab], None]] = {
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
}
