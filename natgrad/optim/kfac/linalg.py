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

Wide factors of few rows. A factor built from fewer rows than half its width (a 2048 -> 10
head on mini-batches of 256: 256 rows, width 2049) has low rank, and is kept as those
rows (:class:`LowRankFactor`): the running average :math:`M = \sum_j w_j R_j^\top R_j` of the
last few refreshes' batches :math:`R_j` (``rows x d``, scaled by :math:`1/\sqrt{\text{rows}}`),
newest last. Each refresh multiplies the old weights by the decay of its interval and gives
the new batch the rest, as the dense running average does; a batch whose weight fell below
:data:`LOW_RANK_DROP` (1%) is dropped and the weights rescaled to sum to 1 (with the defaults,
decay :math:`0.95^{50} = 0.077` per refresh, two batches are kept, weighing 0.93 and 0.07, and
the dropped ones together weighed 0.6%). With :math:`Y` the kept rows stacked
(:math:`r \times d`, :math:`M = Y^\top Y`), the Woodbury identity gives

.. math::
    (M + sI)^{-1} V = \tfrac1s \big(V - Y^\top (sI_r + Y Y^\top)^{-1} Y V\big),

so a refresh costs the :math:`r \times r` Gram matrix and its Cholesky factor
(:class:`WoodburyFactor`) instead of :math:`d^3/3`, and a step :math:`4 r d` flops per
right-hand side instead of :math:`2 d^2` (Tang et al., CVPR 2021, SKFAC, apply the identity to
K-FAC's factors of one batch). Once the kept rows would exceed half the width, the factor
becomes dense and continues as a Cholesky factor. Both forms are exact for the factor they
hold; rounding grows with :math:`\lambda_{\max}(M)/s` in both.

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


LOW_RANK_DROP = 1e-2  # a kept batch whose weight in a low-rank factor falls below this is dropped


class LowRankFactor(NamedTuple):
    r"""A factor kept as batch rows, :math:`M = \sum_j w_j R_j^\top R_j` (``weights`` sum to 1,
    ``rows[j]`` is :math:`R_j`, ``rows x d``, newest last)."""

    weights: tuple[float, ...]
    rows: tuple[torch.Tensor, ...]

    @property
    def rank(self) -> int:
        return sum(r.shape[0] for r in self.rows)

    def stacked(self) -> torch.Tensor:
        r""":math:`Y` with :math:`M = Y^\top Y`: the rows scaled by :math:`\sqrt{w_j}`, stacked (rank, d)."""
        return torch.cat([r * w**0.5 for w, r in zip(self.weights, self.rows, strict=True)])

    def dense(self) -> torch.Tensor:
        Y = self.stacked()
        return Y.T @ Y

    def mean(self) -> torch.Tensor:
        r""":math:`\operatorname{tr}(M)/d`."""
        return sum(w * (r * r).sum() for w, r in zip(self.weights, self.rows, strict=True)) / self.rows[0].shape[1]


class WoodburyFactor(NamedTuple):
    r""":math:`(M + \text{shift}\,I)^{-1}` of a :class:`LowRankFactor` :math:`M = Y^\top Y`: ``rows`` is
    :math:`Y` (r, d), ``upper`` the upper Cholesky factor of :math:`\text{shift}\,I_r + Y Y^\top`."""

    rows: torch.Tensor
    upper: torch.Tensor
    shift: float
    mean: torch.Tensor


Inverse = Eigen | CholeskyFactor | WoodburyFactor
Factor = torch.Tensor | LowRankFactor


def next_weights(weights: list[float], keep: float) -> list[float]:
    """The weights of a low-rank factor's batches after a refresh (a new batch appended): the
    old ones times ``keep``, the new one ``1 - keep``; the oldest dropped while below
    :data:`LOW_RANK_DROP`, the rest rescaled to sum to 1."""
    w = [x * keep for x in weights] + [1.0 - keep] if keep > 0 else [1.0]
    while len(w) > 1 and w[0] < LOW_RANK_DROP:
        w.pop(0)
    total = sum(w)
    return [x / total for x in w]


def steady_batches(keep: float) -> int:
    """How many batches a low-rank factor holds once its weights settle (refresh after refresh)."""
    w = [1.0]
    for _ in range(200):
        w = next_weights(w, keep)
    return len(w)


def running_factor(old: Factor | None, new: Factor, keep: float) -> Factor:
    r"""``keep * old + (1 - keep) * new``, the running average of a factor at a refresh. Two
    low-rank factors stay low rank while their rows are at most half the width (the weights of
    :func:`next_weights`); otherwise the result is dense. ``new`` may be overwritten."""
    if old is None or keep == 0:
        return new
    if isinstance(old, LowRankFactor) and isinstance(new, LowRankFactor):
        w = next_weights(list(old.weights), keep)
        rows = (*old.rows, *new.rows)[-len(w):]
        mixed = LowRankFactor(tuple(w), rows)
        if mixed.rank <= new.rows[0].shape[1] // 2:
            return mixed
    dense = [X.dense() if isinstance(X, LowRankFactor) else X for X in (new, old)]
    return dense[0].lerp_(dense[1], keep)


def dense_factor(X: Factor) -> torch.Tensor:
    return X.dense() if isinstance(X, LowRankFactor) else X


def factor_trace_mean(X: Factor) -> torch.Tensor:
    r""":math:`\operatorname{tr}(M)/\dim M` of a dense or low-rank factor."""
    return X.mean() if isinstance(X, LowRankFactor) else torch.diagonal(X).mean()


def diagonal_fallback(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(diag(M), I): a diagonal stand-in when no eigendecomposition was ever obtained."""
    d = torch.diagonal(M).clone()
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d)).clamp_min(0)
    return d, torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def is_eigen(rep: Inverse) -> bool:
    """Whether ``rep`` is an eigendecomposition (values, vectors)."""
    return not isinstance(rep, CholeskyFactor | WoodburyFactor)


def factor_mean(rep: Inverse) -> torch.Tensor:
    r""":math:`\operatorname{tr}(M)/\dim M` of the factor behind ``rep``."""
    return rep[0].mean() if is_eigen(rep) else rep.mean


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


def _solve(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    r""":math:`(U^\top U)^{-1} V = U^{-1}(U^{-\top} V)` for upper-triangular ``U``: two triangular solves."""
    return torch.linalg.solve_triangular(U, torch.linalg.solve_triangular(U.T, V, upper=False), upper=True)


def _left(rep: Inverse, V: torch.Tensor, shift: float) -> torch.Tensor:
    """(G + shift I)^{-1} V for the output-side factor."""
    if isinstance(rep, CholeskyFactor):
        return _solve(rep.upper, V)
    if isinstance(rep, WoodburyFactor):
        Y = rep.rows
        return (V - Y.T @ _solve(rep.upper, Y @ V)) / rep.shift
    g, Q = rep
    return Q @ ((Q.T @ V) / (g + shift).unsqueeze(1))


def _right(rep: Inverse, V: torch.Tensor, shift: float) -> torch.Tensor:
    """V (A + shift I)^{-1} for the input-side factor."""
    if isinstance(rep, CholeskyFactor):
        return _solve(rep.upper, V.T).T
    if isinstance(rep, WoodburyFactor):
        Y = rep.rows
        return (V - _solve(rep.upper, Y @ V.T).T @ Y) / rep.shift
    a, Q = rep
    return ((V @ Q) / (a + shift).unsqueeze(0)) @ Q.T


def precondition(
    grad: torch.Tensor, rep_A: Inverse, rep_G: Inverse, damping: float, pi_damping: bool = True
) -> torch.Tensor:
    r"""The damped K-FAC natural gradient of one layer (see the module docstring).

    ``grad``: (out, in_dim); ``rep_A``, ``rep_G``: an eigendecomposition ``(values, vectors)``
    or a :class:`CholeskyFactor` or :class:`WoodburyFactor` (whose damping was fixed when it was computed).
    Returns (out, in_dim).
    """
    if not pi_damping:
        (a, QA), (g, QG) = rep_A, rep_G
        V = QG.T @ grad @ QA
        return QG @ (V / (g.unsqueeze(1) * a.unsqueeze(0) + damping)) @ QA.T
    shift_A, shift_G = factor_shifts(factor_mean(rep_A), factor_mean(rep_G), damping)
    if is_eigen(rep_A) and is_eigen(rep_G):
        (a, QA), (g, QG) = rep_A, rep_G  # both eigenbases: one pass
        V = QG.T @ grad @ QA
        return QG @ (V / (g + shift_G).unsqueeze(1) / (a + shift_A).unsqueeze(0)) @ QA.T
    return _right(rep_A, _left(rep_G, grad, shift_G), shift_A)
