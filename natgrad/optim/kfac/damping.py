r"""The Levenberg-Marquardt damping rule of K-FAC (Martens & Grosse 2015, section 6.5).

Every :math:`T_1` steps K-FAC compares the actual change of the objective with
the change its local quadratic model predicted,

.. math::
    \rho = \frac{h(\theta + \delta) - h(\theta)}{M(\delta) - M(0)}, \qquad
    M(\delta) = \nabla h^\top \delta + \tfrac12 \delta^\top (F + (\lambda + \eta) I)\, \delta ,

and moves the damping :math:`\lambda`:

.. math::
    \lambda \leftarrow \begin{cases}
        \omega \lambda & \rho > 3/4 \ \text{(the model is trustworthy: damp less)} \\
        \lambda / \omega & \rho < 1/4 \ \text{(the model over-promised: damp more)} \\
        \lambda & \text{otherwise}
    \end{cases}
    \qquad \omega = (19/20)^{T_1} < 1 ,

then clamps :math:`\lambda` to ``bounds``. The thresholds are strict, so
:math:`\rho = 1/4` and :math:`\rho = 3/4` leave :math:`\lambda` unchanged. A
:math:`\rho` that is not a finite number (the step made the loss non-finite, or
the model predicted no decrease) counts as a bad fit and raises :math:`\lambda`.

A rejected step (the loss rose, :math:`\rho < 0`; :mod:`natgrad.optim.kfac.safeguard`)
does not wait for the slow rule: :math:`\lambda \leftarrow \beta\lambda` at once
(``boost`` :math:`\beta`, 4 by default), as a trust-region method shrinks its radius by a
constant factor after a failed step (Nocedal & Wright 2006, alg. 4.1). Martens & Grosse
check :math:`\rho` every :math:`T_1 = 5` steps; K-FAC here checks every step by default,
so a bad step is caught on the step that made it.

Bounds. :math:`\lambda` is kept in ``bounds`` = (1e-6, 1e4) by default. The lower bound
matters for a softmax output: once the training loss is tiny the Fisher of the batch
vanishes (:math:`p(1-p) \to 0`), the damping term is all that limits the step, and
:math:`\lVert\delta\rVert \le \lVert\nabla h\rVert / \lambda` keeps the step at the
size of the gradient divided by the lower bound.

References: Martens & Grosse, ICML 2015, arXiv 1503.05671, section 6.5;
Martens, ICML 2010 (Hessian-free), section 4.1; Moré, 1978 (Levenberg-Marquardt);
Nocedal & Wright, Numerical Optimization, 2nd ed. 2006, ch. 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOWER = 0.25
UPPER = 0.75
DECAY = 19 / 20
BOOST = 4.0
DEFAULT_BOUNDS = (1e-6, 1e4)


def lm_omega(interval: int, decay: float = DECAY) -> float:
    r""":math:`\omega = \mathrm{decay}^{T_1}`; Martens & Grosse use :math:`(19/20)^{T_1}`."""
    if interval < 1:
        raise ValueError(f"the adaptation interval must be >= 1, got {interval}")
    return decay**interval


def levenberg_marquardt(
    damping: float,
    rho: float | None,
    omega: float,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    lower: float = LOWER,
    upper: float = UPPER,
) -> float:
    r"""One application of the rule: the new :math:`\lambda` from the old one and :math:`\rho`.

    ``rho > upper``: :math:`\omega\lambda`; ``rho < lower`` or not finite:
    :math:`\lambda/\omega`; else unchanged; finally clamped to ``bounds``.
    ``rho=None`` (not measured) leaves :math:`\lambda` unchanged (still clamped).
    """
    if not 0 < omega <= 1:
        raise ValueError(f"omega must be in (0, 1], got {omega}")
    lo, hi = bounds
    if not 0 <= lo <= hi:
        raise ValueError(f"damping bounds must satisfy 0 <= low <= high, got {bounds}")
    if rho is None:
        new = damping
    elif not math.isfinite(rho) or rho < lower:
        new = damping / omega
    elif rho > upper:
        new = damping * omega
    else:
        new = damping
    return min(max(new, lo), hi)


@dataclass(frozen=True)
class LevenbergMarquardt:
    """The rule with its schedule: ``due(step)`` every ``interval`` steps, ``update(damping, rho)``,
    and ``reject(damping)`` after a rejected step."""

    interval: int = 1
    bounds: tuple[float, float] = DEFAULT_BOUNDS
    decay: float = DECAY
    lower: float = LOWER
    upper: float = UPPER
    boost: float = BOOST

    @property
    def omega(self) -> float:
        return lm_omega(self.interval, self.decay)

    def due(self, completed_steps: int) -> bool:
        """True after every ``interval``-th completed step (1-based count)."""
        return completed_steps > 0 and completed_steps % self.interval == 0

    def update(self, damping: float, rho: float | None) -> float:
        return levenberg_marquardt(damping, rho, self.omega, self.bounds, self.lower, self.upper)

    def reject(self, damping: float) -> float:
        """The damping after a rejected step: ``boost`` times larger, clamped to ``bounds``."""
        return min(max(damping * self.boost, self.bounds[0]), self.bounds[1])
