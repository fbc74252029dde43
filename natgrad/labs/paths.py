r"""Paths of optimizers on a two-parameter toy, every iterate recorded, for contour plots.

Sophia and Adam come from the registries (:data:`natgrad.experiments.TASKS`,
:data:`~natgrad.experiments.OPTIMIZERS`), so the lab draws the same optimizers the
other labs train with; Newton's method is the plain iteration
:math:`\theta \leftarrow \theta - H^{-1}\nabla f` with the exact Hessian.

    paths = toy_paths(gamma=1.0, lr=0.05, k=10, steps=100)
    paths["Sophia"].points   # (n, 2) iterates, the first is the start
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from natgrad.experiments import make_stepper, make_task

BOX = 1e3  # an iterate this far out counts as diverged
TOY = "sophia-toy"
# Sophia on the toy: Hutchinson's estimate (exact here: the Hessian is diagonal), no weight
# decay, and short memories so that the path follows the curvature where it is.
TOY_SOPHIA = dict(estimator="hutchinson", betas=(0.9, 0.5), weight_decay=0.0)
TOY_ADAM = dict(beta1=0.9, beta2=0.999)


@dataclass(frozen=True)
class Path2D:
    points: np.ndarray  # (n, 2): the start and every iterate after it
    loss: list[float]  # f at each point
    status: str = "ok"  # "ok" | "diverged" | "error"
    message: str = ""
    extras: dict[str, list] = field(default_factory=dict)  # per step, e.g. Sophia's clipped fraction


def _diverged(theta: torch.Tensor, loss: float, t: int) -> str | None:
    if not math.isfinite(loss) or not bool(torch.all(theta.abs() < BOX)):
        return f"Left the plotted region at step {t}: the iterate is {theta.tolist()}."
    return None


def optimizer_path(optimizer: str, hparams: dict, steps: int, task: str = TOY,
                   task_options: dict | None = None) -> Path2D:
    """Train the two-parameter ObjectiveTask ``task`` with a registered optimizer, recording
    the parameter after every step and the optimizer's statistics."""
    obj = make_task(task, seed=0, device=torch.device("cpu"), dtype=torch.float64, options=task_options)
    stepper = make_stepper(optimizer, obj, dict(hparams))
    theta = next(obj.model.parameters())
    points, losses, extras = [theta.detach().clone().numpy()], [], {}
    for t in range(steps):
        losses.append(stepper.step(None, None))
        for k, v in stepper.stats().items():
            extras.setdefault(k, []).append(v)
        problem = _diverged(theta.detach(), losses[-1], t)
        if problem:
            return Path2D(np.array(points), losses, "diverged", problem, extras)
        points.append(theta.detach().clone().numpy())
    with torch.no_grad():
        losses.append(float(obj.loss()))
    return Path2D(np.array(points), losses, extras=extras)


def newton_path(steps: int, task: str = TOY, task_options: dict | None = None) -> Path2D:
    r""":math:`\theta \leftarrow \theta - H^{-1}\nabla f` (full steps, exact Hessian). It heads for
    the nearest stationary point, a maximum or a saddle as readily as a minimum."""
    obj = make_task(task, seed=0, device=torch.device("cpu"), dtype=torch.float64, options=task_options)
    theta = next(obj.model.parameters())
    points, losses = [theta.detach().clone().numpy()], []
    for t in range(steps):
        loss = obj.loss()
        g = torch.autograd.grad(loss, theta, create_graph=True)[0]
        H = torch.stack([torch.autograd.grad(g[i], theta, retain_graph=True)[0] for i in range(g.numel())])
        losses.append(float(loss.detach()))
        try:
            step = torch.linalg.solve(H.detach(), g.detach())
        except torch.linalg.LinAlgError:
            return Path2D(np.array(points), losses, "error", f"The Hessian is singular at step {t}.")
        with torch.no_grad():
            theta -= step
        problem = _diverged(theta.detach(), losses[-1], t)
        if problem:
            return Path2D(np.array(points), losses, "diverged", problem)
        points.append(theta.detach().clone().numpy())
    with torch.no_grad():
        losses.append(float(obj.loss()))
    return Path2D(np.array(points), losses)


def toy_paths(gamma: float, lr: float, k: int, steps: int, start: tuple[float, float] | None = None
              ) -> dict[str, Path2D]:
    """Sophia (:data:`TOY_SOPHIA` with ``rho=gamma``, learning rate ``lr``, refresh every ``k``),
    Adam (:data:`TOY_ADAM`, the same ``lr``) and Newton's method from ``start`` on the
    negative-curvature toy (:class:`natgrad.tasks.toy2d.NegativeCurvature`)."""
    options = None if start is None else {"x0": float(start[0]), "y0": float(start[1])}
    return {
        "Sophia": optimizer_path("sophia", dict(TOY_SOPHIA, lr=lr, rho=gamma, update_period=k), steps,
                                 task_options=options),
        "Adam": optimizer_path("adam", dict(TOY_ADAM, lr=lr), steps, task_options=options),
        "Newton": newton_path(steps, task_options=options),
    }
