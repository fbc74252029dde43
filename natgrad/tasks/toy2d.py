r"""Two-parameter problems whose contours a lab can draw.

* :class:`NegativeCurvature` - a separable function with a non-convex, sharp coordinate
  and a flat one,

  .. math:: f(x, y) = 8 (x - 1)^2 (1.3 x^2 + 2 x + 1) + \tfrac12 (y - 4)^2 ,

  a quartic in the style of the two-dimensional illustration of Liu et al. 2023 (arXiv
  2305.14342). Along x it has a local minimum near -0.65, a local maximum at 0 and the
  global minimum at 1 (f = 0); :math:`\partial_x^2 f < 0` for x between about -0.37 and
  0.60. Along y the curvature is 1, about 70 times smaller than along x at the minimum.
  Its Hessian is diagonal, so Hutchinson's estimate is exact (:math:`u_i^2 = 1`).
  :func:`negative_curvature_task` wraps it as an :class:`~natgrad.tasks.base.ObjectiveTask`.
* :func:`linear_regression_fisher` - a two-weight linear regression with unit-variance
  Gaussian noise, whose Fisher (= Hessian) is the input covariance; :func:`power_path`
  descends its loss with the diagonal of that Fisher raised to a power (-1: a diagonal
  natural gradient; -1/2: Adam's power).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from natgrad.tasks.base import ObjectiveTask

NEGATIVE_CURVATURE_START = (0.2, 0.0)  # inside the concave region of x, far from y's minimum


class NegativeCurvature(nn.Module):
    """``forward()`` returns f(theta) of the module docstring; ``theta = (x, y)`` is the parameter."""

    def __init__(self, start: tuple[float, float] = NEGATIVE_CURVATURE_START, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(start, dtype=dtype))

    @staticmethod
    def value(x, y):
        """f at points x, y (tensors or numpy arrays of one shape)."""
        return 8 * (x - 1) ** 2 * (1.3 * x**2 + 2 * x + 1) + 0.5 * (y - 4) ** 2

    def forward(self, *ignored) -> torch.Tensor:
        return self.value(self.theta[0], self.theta[1])


def negative_curvature_task(seed: int = 0, device: torch.device | str | None = None,
                            dtype: torch.dtype = torch.float64, x0: float = NEGATIVE_CURVATURE_START[0],
                            y0: float = NEGATIVE_CURVATURE_START[1]) -> ObjectiveTask:
    """:class:`NegativeCurvature` starting at ``(x0, y0)`` (``seed`` is unused: nothing is random)."""
    return ObjectiveTask(NegativeCurvature((x0, y0), dtype=dtype).to(device))


def linear_regression_fisher(scale: float, correlation: float) -> np.ndarray:
    r"""Covariance :math:`\Sigma` of the inputs :math:`(x_1, x_2)` with standard deviations
    1 and ``scale`` and the given correlation: the Fisher of :math:`y = w^\top x + \varepsilon`,
    :math:`\varepsilon \sim \mathcal N(0, 1)`, and the Hessian of the expected loss
    :math:`L(w) = \tfrac12 (w - w^\star)^\top \Sigma (w - w^\star)` (plus a constant)."""
    if not scale > 0 or not -1 < correlation < 1:
        raise ValueError(f"need scale > 0 and -1 < correlation < 1, got {scale}, {correlation}")
    c = correlation * scale
    return np.array([[1.0, c], [c, scale**2]])


def power_path(fisher: np.ndarray, power: float | None, lr: float, steps: int, start, target) -> np.ndarray:
    r"""Iterates :math:`w_{t+1} = w_t - \eta\, P\, \Sigma (w_t - w^\star)` of the quadratic above,
    :math:`P = \operatorname{diag}(\Sigma)^{power}` (``power`` -1 or -1/2), or
    :math:`P = \Sigma^{-1}` (the full natural gradient) with ``power`` None. Returns
    (steps + 1, 2); stops early (shorter array) once the iterate leaves :math:`|w| < 10^6`."""
    P = np.linalg.inv(fisher) if power is None else np.diag(np.diag(fisher) ** power)
    w, target = np.asarray(start, dtype=float), np.asarray(target, dtype=float)
    out = [w.copy()]
    for _ in range(steps):
        w = w - lr * P @ fisher @ (w - target)
        if not np.all(np.abs(w) < 1e6):
            break
        out.append(w.copy())
    return np.array(out)


def quadratic_loss(fisher: np.ndarray, target, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """L(w) = 1/2 (w - w*)^T Sigma (w - w*) on a grid (w1, w2 of one shape)."""
    d1, d2 = w1 - target[0], w2 - target[1]
    return 0.5 * (fisher[0, 0] * d1**2 + 2 * fisher[0, 1] * d1 * d2 + fisher[1, 1] * d2**2)
