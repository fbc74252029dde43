r"""K-FAC's step size and its safeguards.

The quadratic model of the change of :math:`h` along :math:`\delta` on the current batch
(:mod:`natgrad.optim.kfac.quadratic`, Martens & Grosse 2015, s. 7) is

.. math::
    M(\delta) = \nabla h^\top\delta + \tfrac12\,\delta^\top F\delta + \tfrac{\lambda + \eta}{2}\lVert\delta\rVert^2 ,

with :math:`F` the exact Fisher (= GGN) of the batch. For the proposal :math:`\Delta` and
the previous update :math:`\delta_0` only the scalars :class:`ModelTerms` enter.

**Step coefficients** (``step_size_rule="quadratic"``). :math:`(\alpha, \mu)` minimise
:math:`M(\alpha\Delta + \mu\delta_0)` with :math:`0 \le \mu \le \mu_{\max}` (``max_momentum``):
the unconstrained 2x2 solution when its :math:`\mu` is inside the interval, else the better of
the two edges :math:`\mu \in \{0, \mu_{\max}\}` with :math:`\alpha` optimal for that
:math:`\mu` (the exact minimiser over the strip, since :math:`M` is convex in
:math:`(\alpha, \mu)`). Unbounded, this rule returns :math:`\mu = 44.6` and then
:math:`-435` when the curvature along :math:`\delta_0` nearly vanishes (a saturated softmax),
and the weights jump by orders of magnitude. The step is then scaled by ``lr`` (1 by default;
so LR schedulers act on it).

**Trust region in the Fisher norm**. The model predicts the mean KL divergence between the
output distributions before and after the step as
:math:`\tfrac12\delta^\top F\delta` (Amari 1998; Martens 2020, s. 9). When it exceeds
:math:`\kappa` (``max_kl``) both coefficients are multiplied by
:math:`\nu = \sqrt{\kappa / (\tfrac12\delta^\top F\delta)}`, so the combined
:math:`\alpha\Delta + \mu\delta_0` step lies on the boundary of the KL ball (the KL clipping
of Ba, Grosse & Martens 2017 applied to the whole update, with the exact Fisher of the batch
rather than the K-FAC one).

**Rejection** (Nocedal & Wright 2006, alg. 4.1; Moré 1978). With :math:`\rho` measured
(:mod:`natgrad.optim.kfac.damping`), a step whose loss on the batch rose
(:math:`\rho < 0`: the model predicted a decrease), or became non-finite, is undone and the
damping is multiplied at once by ``boost``; the next call tries again from the same weights
with the larger damping. A rise within rounding of the loss
(:func:`loss_rose`) is not a rejection.

References: Martens & Grosse, ICML 2015, arXiv 1503.05671, s. 6-7; Ba, Grosse & Martens,
ICLR 2017 (KL clipping); Martens, JMLR 2020, arXiv 1412.1193; Nocedal & Wright, Numerical
Optimization, 2nd ed. 2006, ch. 4; Moré, 1978 (Levenberg-Marquardt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from natgrad.optim.kfac.quadratic import step_coefficients


@dataclass(frozen=True)
class ModelTerms:
    r"""The scalars of :math:`M` on :math:`\mathrm{span}\{\Delta, \delta_0\}`, without damping:
    :math:`\Delta^\top F\Delta`, :math:`\Delta^\top\Delta`, :math:`\nabla h^\top\Delta` and, with a
    previous update, :math:`\Delta^\top F\delta_0`, :math:`\Delta^\top\delta_0`,
    :math:`\delta_0^\top F\delta_0`, :math:`\delta_0^\top\delta_0`, :math:`\nabla h^\top\delta_0`."""

    FDD: float
    DD: float
    gD: float
    FDd: float = 0.0
    Dd: float = 0.0
    Fdd: float = 0.0
    dd: float = 0.0
    gd: float = 0.0
    momentum: bool = False

    def damped(self, lam: float) -> tuple[float, ...]:
        """The entries of :func:`natgrad.optim.kfac.quadratic.step_coefficients` with :math:`C = F + \\lambda I`."""
        first = (self.FDD + lam * self.DD, self.gD)
        if not self.momentum:
            return first
        return (*first, self.FDd + lam * self.Dd, self.Fdd + lam * self.dd, self.gd)

    def change(self, alpha: float, mu: float, lam: float) -> float:
        r""":math:`M(\alpha\Delta + \mu\delta_0) - M(0)`."""
        quad = alpha * alpha * (self.FDD + lam * self.DD)
        if self.momentum:
            quad += 2 * alpha * mu * (self.FDd + lam * self.Dd) + mu * mu * (self.Fdd + lam * self.dd)
        return alpha * self.gD + (mu * self.gd if self.momentum else 0.0) + 0.5 * quad

    def kl(self, alpha: float, mu: float) -> float:
        r""":math:`\tfrac12\delta^\top F\delta` for :math:`\delta = \alpha\Delta + \mu\delta_0`."""
        quad = alpha * alpha * self.FDD
        if self.momentum:
            quad += 2 * alpha * mu * self.FDd + mu * mu * self.Fdd
        return 0.5 * quad


@dataclass(frozen=True)
class StepChoice:
    alpha: float
    mu: float
    predicted: float  # M(delta) - M(0)
    kl: float  # 1/2 delta^T F delta after the trust region
    nu: float = 1.0  # trust-region scale (1: not active)
    mu_bounded: bool = False  # the momentum interval was active

    @property
    def bound_hit(self) -> bool:
        return self.nu < 1.0 or self.mu_bounded


def bounded_coefficients(terms: ModelTerms, lam: float, max_momentum: float) -> tuple[float, float, bool]:
    r"""The minimiser of :math:`M(\alpha\Delta + \mu\delta_0)` over :math:`0 \le \mu \le \mu_{\max}`;
    returns ``(alpha, mu, bounded)`` with ``bounded`` True when an edge of the interval is the answer."""
    entries = terms.damped(lam)
    alpha, mu = step_coefficients(*entries)
    if not terms.momentum or 0.0 <= mu <= max_momentum:
        return alpha, mu, False
    CDD, gD, CDd = entries[0], entries[1], entries[2]
    if not CDD > 0:
        return 0.0, 0.0, True
    edges = [(-(gD + m * CDd) / CDD, m) for m in (0.0, max_momentum)]
    a, m = min(edges, key=lambda am: terms.change(am[0], am[1], lam))
    return a, m, True


def choose_step(terms: ModelTerms, lam: float, *, lr: float = 1.0, max_momentum: float = 0.95,
                max_kl: float | None = None) -> StepChoice:
    """The safeguarded quadratic-model step (module docstring): bounded coefficients, times
    ``lr``, then scaled into the KL ball of radius ``max_kl`` (None: no trust region)."""
    alpha, mu, bounded = bounded_coefficients(terms, lam, max_momentum)
    alpha, mu = lr * alpha, lr * mu
    kl, nu = terms.kl(alpha, mu), 1.0
    if max_kl is not None and kl > max_kl > 0:
        nu = math.sqrt(max_kl / kl)
        alpha, mu, kl = nu * alpha, nu * mu, max_kl
    return StepChoice(alpha, mu, terms.change(alpha, mu, lam), kl, nu, bounded)


def _rounding(h0: float, h1: float, eps: float) -> float:
    return 64 * eps * max(abs(h0), abs(h1))


def loss_rose(h0: float, h1: float, eps: float) -> bool:
    """Whether the loss went from ``h0`` to ``h1`` by more than rounding (``64 eps`` relative,
    ``eps`` the machine epsilon of the model's dtype), or ``h1`` is not finite."""
    if not math.isfinite(h1):
        return True
    return h1 - h0 > _rounding(h0, h1, eps)


def within_rounding(h0: float, h1: float, predicted: float, eps: float) -> bool:
    """Whether both the actual and the predicted change are below the rounding of the loss:
    then :math:`\rho` measures nothing (a loss at its floating-point floor), and the damping
    is left alone instead of being raised step after step."""
    tol = _rounding(h0, h1, eps)
    return math.isfinite(h1) and abs(h1 - h0) <= tol and abs(predicted) <= tol
