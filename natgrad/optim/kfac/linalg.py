r"""Eigendecompositions of the Kronecker factors and the damped K-FAC inverse.

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

:func:`natgrad.optim.linalg.robust_eigh`: :func:`natgrad.optim.linalg.safe_eigh` (``torch.linalg.eigh``,
retried in float64 on an exception or non-finite output; MPS is done on the CPU);
if both fail it reports failure and the caller keeps its previous decomposition.

References: Martens & Grosse, ICML 2015, arXiv 1503.05671 (s. 6.3);
George et al., NeurIPS 2018, arXiv 1806.03884 (eigenbasis form);
Shi et al. 2023, arXiv 2309.06497 (fp64 retry and keeping the previous root).
"""

from __future__ import annotations

import torch


def diagonal_fallback(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(M), I): a diagonal stand-in when no eigendecomposition was ever obtained."""
    d = torch.diagonal(M).clone()
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d)).clamp_min(0)
    return d, torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def pi_factor(evals_A: torch.Tensor, evals_G: torch.Tensor) -> torch.Tensor:
    r""":math:`\pi = \sqrt{(\operatorname{tr}A/\dim A)/(\operatorname{tr}G/\dim G)}` (1 if a trace is 0)."""
    ta, tg = evals_A.mean(), evals_G.mean()
    ok = (ta > 0) & (tg > 0)
    return torch.where(ok, ta / torch.where(ok, tg, torch.ones_like(tg)), torch.ones_like(ta)).sqrt()


def precondition(
    grad: torch.Tensor,
    eig_A: tuple[torch.Tensor, torch.Tensor],
    eig_G: tuple[torch.Tensor, torch.Tensor],
    damping: float,
    pi_damping: bool = True,
) -> torch.Tensor:
    r"""The damped K-FAC natural gradient of one layer (see the module docstring).

    ``grad``: (out, in_dim); ``eig_A = (a, Q_A)``, ``eig_G = (g, Q_G)``. Returns (out, in_dim).
    """
    (a, QA), (g, QG) = eig_A, eig_G
    V = QG.T @ grad @ QA  # (out, in_dim) in the eigenbases
    if pi_damping:
        pi = pi_factor(a, g)
        root = damping**0.5
        V = V / (g + root / pi).unsqueeze(1) / (a + root * pi).unsqueeze(0)
    else:
        V = V / (g.unsqueeze(1) * a.unsqueeze(0) + damping)
    return QG @ V @ QA.T
