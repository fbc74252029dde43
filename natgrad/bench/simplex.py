r"""The Fisher-Rao natural gradient against projected Euclidean gradient descent on the simplex.

Task ``simplex-kl``: fit a categorical :math:`p` on 3 outcomes to a target :math:`q` by
minimising :math:`\mathrm{KL}(q\,\|\,p)`, from the uniform distribution, in float64.

1. Targets: a fixed list of distributions away from the start (:func:`protocol`).
2. Natural gradient: ``natgrad.optim.riemannian.RiemannianSGD`` (geoopt's; no momentum here) on
   :class:`~natgrad.optim.riemannian.simplex.ProbabilitySimplex` (Riemannian gradient
   :math:`p \odot (g - \langle p, g\rangle) = p - q`, exponentiated retraction), and the same
   with the exact exponential map; projected GD: ``ProjectedSGD`` (Euclidean step, then
   the Euclidean projection onto the simplex). No momentum.
3. Each method is tuned per target on its learning-rate grid: the grid point that first
   reaches :math:`\mathrm{KL} \le` ``tolerance`` (a tight :math:`10^{-10}`); steps counted as
   in :meth:`natgrad.experiments.Trajectory.steps_to` (the first step whose loss, before
   its update, is at or below the tolerance).
4. Reported: tuned steps per method and target, and the ratio projected GD / natural
   gradient (a target projected GD never reaches within the step cap gives a lower bound),
   next to :math:`\max_i q_i / \min_i q_i`: near the optimum the loss's Hessian is
   :math:`\operatorname{diag}(1/q)`, so this is the condition number projected GD faces on
   the tangent plane, while the natural gradient (:math:`p - q`) does not see it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from natgrad.bench.protocol import fmt, load, machine, save, to_jsonable
from natgrad.experiments import Spec, run

__all__ = ["METHODS", "benchmark", "load", "protocol", "report", "save"]

TASK = "simplex-kl"
START = (1 / 3, 1 / 3, 1 / 3)
# label -> (optimizer, task options beyond the target)
METHODS = {
    "natural gradient": ("riemannian-sgd", {}),
    "natural gradient (exact exp map)": ("riemannian-sgd", {"exact": True}),
    "projected GD": ("projected-sgd", {}),
}


def protocol(quick: bool) -> dict:
    ng = [float(x) for x in np.geomspace(0.25, 2.0, 7 if quick else 13)]
    pgd = [float(x) for x in np.geomspace(1e-3, 1.0, 13 if quick else 25)]
    targets = [(0.7, 0.2, 0.1), (0.9, 0.09, 0.01), (0.05, 0.15, 0.8)]
    if not quick:
        targets += [(0.5, 0.3, 0.2), (0.6, 0.05, 0.35), (0.2, 0.4, 0.4)]
    return dict(start=list(START), targets=[list(t) for t in targets], tolerance=1e-10, steps=150 if quick else 300,
                dtype="float64", lrs={"natural gradient": ng, "natural gradient (exact exp map)": ng,
                                      "projected GD": pgd})


def _tune(label: str, target: list[float], p: dict, device: str) -> dict:
    """The learning rate of ``label``'s grid that reaches the tolerance in the fewest steps."""
    optimizer, options = METHODS[label]
    tried = []
    for lr in p["lrs"][label]:
        traj = run(Spec.make({"lr": lr}, {"target": tuple(target), "start": tuple(p["start"]), **options}, task=TASK,
                             optimizer=optimizer, steps=p["steps"], dtype=p["dtype"], device=device))
        tried.append(dict(lr=lr, steps=traj.steps_to(p["tolerance"]), final_loss=traj.final_loss, status=traj.status))
    reached = [t for t in tried if t["steps"] is not None]
    best = min(reached, key=lambda t: (t["steps"], t["lr"])) if reached else min(
        tried, key=lambda t: t["final_loss"] if np.isfinite(t["final_loss"]) else np.inf)
    return dict(best, grid=tried)


def benchmark(quick: bool = False, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    p = protocol(quick)
    log(f"{len(p['targets'])} targets from {tuple(round(x, 3) for x in p['start'])}, KL <= {p['tolerance']:g}, "
        f"at most {p['steps']} steps, {p['dtype']}")
    rows = []
    for target in p["targets"]:
        tuned = {label: _tune(label, target, p, device) for label in METHODS}
        ng, pgd = tuned["natural gradient"], tuned["projected GD"]
        ratio = pgd["steps"] / ng["steps"] if ng["steps"] and pgd["steps"] is not None else None
        bound = p["steps"] / ng["steps"] if ng["steps"] and pgd["steps"] is None else None
        rows.append(dict(target=target, ratio=ratio, ratio_at_least=bound, **{label: t for label, t in tuned.items()}))
        log(f"target {tuple(target)}: " + ", ".join(f"{label} {fmt(t['steps'], 'd')} steps (lr {t['lr']:.3g})"
                                                      for label, t in tuned.items()))
    ratios = [r["ratio"] if r["ratio"] is not None else r["ratio_at_least"] for r in rows]
    ratios = [x for x in ratios if x is not None]
    return to_jsonable(dict(quick=quick, device=device, machine=machine(), protocol=p, rows=rows,
                            min_ratio=min(ratios) if ratios else None,
                            median_ratio=float(np.median(ratios)) if ratios else None))


def report(r: dict) -> str:
    p = r["protocol"]
    lines = [f"Fisher-Rao natural gradient vs projected GD on the simplex, KL(q || p) <= {p['tolerance']:g} from the "
             f"uniform start ({'quick' if r['quick'] else 'full'} protocol, {p['dtype']}, at most {p['steps']} steps, "
             f"each method's learning rate tuned per target)", "",
             f"{'target q':>22} {'max/min q':>9} " + " ".join(f"{label:>32}" for label in METHODS) + f" {'PGD / NG':>9}"]
    for row in r["rows"]:
        cells = [f"{fmt(row[label]['steps'], 'd')} steps (lr {row[label]['lr']:.3g})" for label in METHODS]
        ratio = (fmt(row["ratio"], ".1f") + "x" if row["ratio"] is not None else
                 (">=" + fmt(row["ratio_at_least"], ".0f") + "x" if row["ratio_at_least"] is not None else "n/a"))
        target = "(" + ", ".join(f"{x:g}" for x in row["target"]) + ")"
        spread = max(row["target"]) / min(row["target"])
        lines.append(f"{target:>22} {spread:>9.1f} " + " ".join(f"{c:>32}" for c in cells) + f" {ratio:>9}")
    lines += ["", f"steps of projected GD / steps of the natural gradient: smallest {fmt(r['min_ratio'], '.1f')}x, "
                  f"median {fmt(r['median_ratio'], '.1f')}x over {len(r['rows'])} targets"]
    return "\n".join(lines)
