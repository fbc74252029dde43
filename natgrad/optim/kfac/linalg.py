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
head about 2.5 s against 0.17 s on one CPU thread. With factored damping a factor
only enters through :math:`(A + \pi\sqrt\lambda I)^{-1}`, which needs no eigenbasis,
so a factor wider than ``wide_factor_dim`` is inverted through its Cholesky factor
:math:`LL^\top = A + sI` (``torch.cholesky_inverse``, about :math:`d^3` flops in all) with the
shift :math:`s = \pi\sqrt\lambda` of the damping in force at that moment
(:class:`CholeskyInverse`; the inverse is kept because one product with it is several times
faster than two triangular solves), and refreshed on its own, rarer schedule. Between refreshes that factor's
damping stays frozen while the other factor follows :math:`\lambda` (kfac-pytorch
also folds the damping into its inverses at refresh time; Pauloski et al., SC20,
arXiv 2007.00784). Exact Tikhonov damping needs both eigenbases, so it always uses
eigendecompositions.

:func:`natgrad.optim.linalg.robust_eigh`: :func:`natgrad.optim.linalg.safe_eigh` (``torch.linalg.eigh``,
retried in float64 on an exception or non-finite output; MPS is done on the CPU);
if both fail it reports failure and the caller keeps its previous decomposition.
:func:`robust_cholesky_inverse` does the same for the inverse of a wide factor.

References: Martens & Grosse, ICML 2015, arXiv 1503.05671 (s. 6.3);
George et al., NeurIPS 2018, arXiv 1806.03884 (eigenbasis form);
Shi et al. 2023, arXiv 2309.06497 (fp64 retry and keeping the previous root).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Eigen = tuple[torch.Tensor, torch.Tensor]  # (eigenvalues ascending, clamped at 0; eigenvectors)


class CholeskyInverse(NamedTuple):
    """A wide factor ``M`` as ``inverse`` :math:`= (M + \\text{shift}\\, I)^{-1}`, computed through
    its Cholesky factor; ``mean`` is :math:`\\operatorname{tr}(M)/\\dim M` (for :math:`\\pi`)."""

    inverse: torch.Tensor
    shift: float
    mean: torch.Tensor


Inverse = Eigen | CholeskyInverse


def diagonal_fallback(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(M), I): a diagonal stand-in when no eigendecomposition was ever obtained."""
    d = torch.diagonal(M).clone()
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d)).clamp_min(0)
    return d, torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def factor_mean(rep: Inverse) -> torch.Tensor:
    r""":math:`\operatorname{tr}(M)/\dim M` of the factor behind ``rep``."""
    return rep.mean if isinstance(rep, CholeskyInverse) else rep[0].mean()


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


def robust_cholesky_inverse(M: torch.Tensor, shift: float) -> tuple[torch.Tensor | None, str]:
    """:math:`(M + \\text{shift}\\,I)^{-1}` through a Cholesky factorisation: in ``M.dtype``, then in
    float64; ``(None, why)`` if both fail."""
    why = ""
    for dtype in dict.fromkeys((M.dtype, torch.float64)):
        shifted = M.to(dtype) + shift * torch.eye(M.shape[0], dtype=dtype, device=M.device)
        L, info = torch.linalg.cholesky_ex(shifted)
        if int(info) == 0:
            inv = torch.cholesky_inverse(L)
            if bool(torch.isfinite(inv).all()):
                return inv.to(M.dtype), why
        why = f"Cholesky failed in {dtype} (leading minor {int(info)} not positive)"
        why = why + "; float64 retry" if dtype != torch.float64 else why
    return None, why


def _left(rep: Inverse, V: torch.Tensor, shift: float) -> torch.Tensor:
    """(G + shift I)^{-1} V for the output-side factor."""
    if isinstance(rep, CholeskyInverse):
        return rep.inverse @ V
    g, Q = rep
    return Q @ ((Q.T @ V) / (g + shift).unsqueeze(1))


def _right(rep: Inverse, V: torch.Tensor, shift: float) -> torch.Tensor:
    """V (A + shift I)^{-1} for the input-side factor."""
    if isinstance(rep, CholeskyInverse):
        return V @ rep.inverse
    a, Q = rep
    return ((V @ Q) / (a + shift).unsqueeze(0)) @ Q.T


def precondition(
    grad: torch.Tensor, rep_A: Inverse, rep_G: Inverse, damping: float, pi_damping: bool = True
) -> torch.Tensor:
    r"""The damped K-FAC natural gradient of one layer (see the module docstring).

    ``grad``: (out, in_dim); ``rep_A``, ``rep_G``: an eigendecomposition ``(values, vectors)``
    or a :class:`CholeskyInverse` (whose damping was fixed when it was computed).
    Returns (out, in_dim).
    """
    if not pi_damping:
        (a, QA), (g, QG) = rep_A, rep_G
        V = QG.T @ grad @ QA
        return QG @ (V / (g.unsqueeze(1) * a.unsqueeze(0) + damping)) @ QA.T
    shift_A, shift_G = factor_shifts(factor_mean(rep_A), factor_mean(rep_G), damping)
    if not isinstance(rep_A, CholeskyInverse) and not isinstance(rep_G, CholeskyInverse):
        (a, QA), (g, QG) = rep_A, rep_G  # both eigenbases: one pass
        V = QG.T @ grad @ QA
        return QG @ (V / (g + shift_G).unsqueeze(1) / (a + shift_A).unsqueeze(0)) @ QA.T
    return _right(rep_A, _left(rep_G, grad, shift_G), shift_A)
