r"""The damped K-FAC inverse of each layer: eigenbases for most factors, a Cholesky
factor for wide ones.

With :math:`A = Q_A \operatorname{diag}(a) Q_A^\top` and
:math:`G = Q_G \operatorname{diag}(g) Q_G^\top`, a layer's gradient
:math:`\nabla = [\nabla_W \mid \nabla_b]` (out, in+1) is preconditioned as

* factored Tikhonov damping (``pi_damping=True``, Martens & Grosse 2015, s. 6.3):

  .. math::
      (G + \tfrac{\sqrt\lambda}{\pi} I)^{-1} \nabla (A + \pi\sqrt\lambda\, I)^{-1}
      = Q_G \Big[ \frac{Q_G^\top \nabla Q_A}{(g + \sqrt\lambda/\pi)(a + \pi\sqrt\lambda)^\top} \Big] Q_A^\top,
      \qquad \pi = \sqrt{\frac{\operatorname{tr}(A)/\dim A}{\operatorname{tr}(G)/\dim G}} ;

* exact Tikhonov damping of the Kronecker product (``pi_damping=False``):

  .. math::
      (A \otimes G + \lambda I)^{-1} \operatorname{vec}(\nabla)
      = \operatorname{vec}\Big(Q_G \Big[ \frac{Q_G^\top \nabla Q_A}{g a^\top + \lambda} \Big] Q_A^\top\Big)

  (division elementwise). Both are cheap for any :math:`\lambda` once the
  eigendecompositions exist, so the damping may change every step while the
  eigendecompositions are refreshed only every few steps.

Wide factors. A symmetric eigendecomposition costs about :math:`9d^3` flops, a
Cholesky factorisation :math:`d^3/3`: for the 2049-wide input factor of a 2048 -> 10
head about 0.66 s against 0.05 s on one CPU thread. With factored damping a factor
only enters through :math:`(A + \pi\sqrt\lambda I)^{-1}`, which needs no eigenbasis,
so a factor wider than ``wide_factor_dim`` is kept as its upper Cholesky factor
:math:`U^\top U = A + sI` with the shift :math:`s = \pi\sqrt\lambda` of the damping in force at
that moment (:class:`CholeskyFactor`), refreshed on its own, rarer schedule, and applied by
two triangular solves, :math:`V (A + sI)^{-1} = \big(U^{-1} (U^{-\top} V^\top)\big)^\top`. On that
head the two solves take about as long as one product with an explicit inverse (1.7 against
1.6 ms per step on one thread), while forming the inverse (``torch.cholesky_inverse``) would
triple the refresh (0.15 s instead of 0.05 s) and round the product twice. Between refreshes
that factor's damping stays frozen while the other factor follows :math:`\lambda` (kfac-pytorch
also folds the damping into its inverses at refresh time; Pauloski et al., SC20,
arXiv 2007.00784). Exact Tikhonov damping needs both eigenbases, so it always uses
eigendecompositions.

:func:`natgrad.optim.linalg.robust_eigh`: :func:`natgrad.optim.linalg.safe_eigh` (``torch.linalg.eigh``,
retried in float64 on an exception or non-finite output; MPS is done on the CPU);
if both fail it reports failure and the caller keeps its previous decomposition.
:func:`robust_cholesky` does the same for the Cholesky factor of a wide factor.

References: Martens & Grosse, ICML 2015, arXiv 1503.05671 (s. 6.3);
George et al., NeurIPS 2018, arXiv 1806.03884 (eigenbasis form);
Shi et al. 2023, arXiv 2309.06497 (fp64 retry and keeping the previous root).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Eigen = tuple[torch.Tensor, torch.Tensor]  # (eigenvalues ascending, clamped at 0; eigenvectors)


class CholeskyFactor(NamedTuple):
    r"""A wide factor ``M`` as ``upper``, the upper-triangular :math:`U` with
    :math:`U^\top U = M + \text{shift}\, I`; ``mean`` is :math:`\operatorname{tr}(M)/\dim M` (for :math:`\pi`)."""

    upper: torch.Tensor
    shift: float
    mean: torch.Tensor


Inverse = Eigen | CholeskyFactor


def diagonal_fallback(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(M), I): a diagonal stand-in when no eigendecomposition was ever obtained."""
    d = torch.diagonal(M).clone()
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d)).clamp_min(0)
    return d, torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def factor_mean(rep: Inverse) -> torch.Tensor:
    r""":math:`\operatorname{tr}(M)/\dim M` of the factor behind ``rep``."""
    return rep.mean if isinstance(rep, CholeskyFactor) else rep[0].mean()


def pi_factor(mean_A: torch.Tensor, mean_G: torch.Tensor) -> torch.Tensor:
    r""":math:`\pi = \sqrt{(\operatorname{tr}A/\dim A)/(\operatorname{tr}G/\dim G)}` (1 if a trace is 0)."""
    ta, tg = mean_A, mean_G
    ok = (ta > 0) & (tg > 0)
    return torch.where(ok, ta / torch.where(ok, tg, torch.ones_like(tg)), torch.ones_like(ta)).sqrt()


def factor_shifts(mean_A: torch.Tensor, mean_G: torch.Tensor, damping: float) -> tuple[float, float]:
    r"""The factored damping :math:`(\pi\sqrt\lambda, \sqrt\lambda/\pi)` added to (A, G)."""
    pi = float(pi_factor(mean_A, mean_G))
    root = damping**0.5
    return pi * root, root / pi


def robust_cholesky(M: torch.Tensor, shift: float) -> tuple[torch.Tensor | None, str]:
    r"""The upper Cholesky factor :math:`U` of :math:`M + \text{shift}\,I` (:math:`U^\top U`): in
    ``M.dtype``, then in float64; ``(None, why)`` if both fail."""
    why = ""
    for dtype in dict.fromkeys((M.dtype, torch.float64)):
        shifted = M.to(dtype) + shift * torch.eye(M.shape[0], dtype=dtype, device=M.device)
        U, info = torch.linalg.cholesky_ex(shifted, upper=True)
        if int(info) == 0 and bool(torch.isfinite(torch.diagonal(U)).all()):
            return U.to(M.dtype), why
        why = f"Cholesky failed in {dtype} (leading minor {int(info)} not positive)"
        why = why + "; float64 retry" if dtype != torch.float64 else why
    return None, why


def _solve(rep: CholeskyFactor, V: torch.Tensor) -> torch.Tensor:
    r""":math:`(M + \text{shift}\,I)^{-1} V = U^{-1}(U^{-\top} V)`: two triangular solves."""
    U = rep.upper
    return torch.linalg.solve_triangular(U, torch.linalg.solve_triangular(U.T, V, upper=False), upper=True)


def _left(rep: Inverse, V: torch.Tensor, shift: float) -> torch.Tensor:
    """(G + shift I)^{-1} V for the output-side factor."""
    if isinstance(rep, CholeskyFactor):
        return _solve(rep, V)
    g, Q = rep
    return Q @ ((Q.T @ V) / (g + shift).unsqueeze(1))


def _right(rep: Inverse, V: torch.Tensor, shift: float) -> torch.Tensor:
    """V (A + shift I)^{-1} for the input-side factor."""
    if isinstance(rep, CholeskyFactor):
        return _solve(rep, V.T).T
    a, Q = rep
    return ((V @ Q) / (a + shift).unsqueeze(0)) @ Q.T


def precondition(
    grad: torch.Tensor, rep_A: Inverse, rep_G: Inverse, damping: float, pi_damping: bool = True
) -> torch.Tensor:
    r"""The damped K-FAC natural gradient of one layer (see the module docstring).

    ``grad``: (out, in_dim); ``rep_A``, ``rep_G``: an eigendecomposition ``(values, vectors)``
    or a :class:`CholeskyFactor` (whose damping was fixed when it was computed).
    Returns (out, in_dim).
    """
    if not pi_damping:
        (a, QA), (g, QG) = rep_A, rep_G
        V = QG.T @ grad @ QA
        return QG @ (V / (g.unsqueeze(1) * a.unsqueeze(0) + damping)) @ QA.T
    shift_A, shift_G = factor_shifts(factor_mean(rep_A), factor_mean(rep_G), damping)
    if not isinstance(rep_A, CholeskyFactor) and not isinstance(rep_G, CholeskyFactor):
        (a, QA), (g, QG) = rep_A, rep_G  # both eigenbases: one pass
        V = QG.T @ grad @ QA
        return QG @ (V / (g + shift_G).unsqueeze(1) / (a + shift_A).unsqueeze(0)) @ QA.T
    return _right(rep_A, _left(rep_G, grad, shift_G), shift_A)
