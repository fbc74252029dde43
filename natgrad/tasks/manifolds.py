r"""Manifold toy problems, as :class:`~natgrad.tasks.base.ObjectiveTask` s whose parameter is a ``geoopt.ManifoldParameter``.

* ``stiefel-pca`` (:func:`stiefel_pca_task`): the top-``k`` eigenvectors of the digits'
  pixel covariance :math:`C` (64 x 64, scaled so its largest eigenvalue is 1) as
  :math:`\max_{Q^\top Q = I_k} \operatorname{tr}(Q^\top C Q)`; the loss is the gap
  :math:`\sum_{i \le k} \lambda_i(C) - \operatorname{tr}(Q^\top C Q)`, zero exactly at the
  top-``k`` eigenspace (Ky Fan's maximum principle) and non-negative while
  :math:`Q^\top Q = I`. Off the manifold (plain Adam) it goes negative without bound.
* ``simplex-kl`` (:func:`simplex_kl_task`): fit a categorical distribution :math:`p` to a
  target :math:`q` by minimising :math:`\mathrm{KL}(q\,\|\,p) = \sum_i q_i \log(q_i/p_i)`,
  the maximum-likelihood objective; its Fisher-Rao natural gradient is :math:`p - q`
  (Amari 1998), so the optimum :math:`p = q` is one full natural-gradient step away.

The Poincare tree embedding is in :mod:`natgrad.tasks.poincare`. Each model's
``stats()`` is recorded after every update by :func:`natgrad.experiments.run`.
"""

from __future__ import annotations

from functools import lru_cache

import geoopt
import torch
from torch import nn

from natgrad.optim.riemannian.simplex import ProbabilitySimplex, ProbabilitySimplexExact
from natgrad.tasks.base import ObjectiveTask

__all__ = ["SimplexKL", "StiefelPCA", "digits_covariance", "simplex_kl_task", "stiefel_pca_task"]

STIEFEL = {"qr": geoopt.EuclideanStiefel, "cayley": geoopt.CanonicalStiefel}


@lru_cache(maxsize=1)
def digits_covariance() -> torch.Tensor:
    """(64, 64) float64 covariance of the 1797 digits' pixels, divided by its largest eigenvalue."""
    from natgrad.tasks.digits import load_digits_tensors

    X, _ = load_digits_tensors(dtype=torch.float64)
    Xc = X - X.mean(dim=0)
    c = Xc.T @ Xc / (X.shape[0] - 1)
    return c / torch.linalg.eigvalsh(c)[-1]


class StiefelPCA(nn.Module):
    """Gap to the best :math:`\\operatorname{tr}(Q^\\top C Q)` over orthonormal ``Q`` (module docstring)."""

    def __init__(self, cov: torch.Tensor, q0: torch.Tensor, manifold: geoopt.Manifold):
        super().__init__()
        k = q0.shape[1]
        self.register_buffer("cov", cov)  # (n, n)
        self.best = float(torch.linalg.eigvalsh(cov.double())[-k:].sum())  # sum of the k largest eigenvalues
        self.q = geoopt.ManifoldParameter(q0, manifold=manifold)  # (n, k)

    def objective(self) -> torch.Tensor:
        return torch.sum(self.q * (self.cov @ self.q))  # tr(Q^T C Q)

    def forward(self, *ignored) -> torch.Tensor:
        return self.best - self.objective()

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        k = self.q.shape[1]
        eye = torch.eye(k, dtype=self.q.dtype, device=self.q.device)
        return {"objective": float(self.objective()),
                "orthogonality error": float((self.q.T @ self.q - eye).abs().max())}


def stiefel_pca_task(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                     k: int = 4, retraction: str = "qr") -> ObjectiveTask:
    """Top-``k`` eigenvectors of the digits covariance from a random orthonormal start (drawn from ``seed``);
    ``retraction``: "qr" (geoopt's ``EuclideanStiefel``) or "cayley" (``CanonicalStiefel``)."""
    cov = digits_covariance()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cov.shape[0]:
        raise ValueError(f"k must be between 1 and {cov.shape[0]}, got {k}")
    if retraction not in STIEFEL:
        raise ValueError(f"retraction must be one of {sorted(STIEFEL)}, got {retraction!r}")
    g = torch.Generator().manual_seed(seed)
    q0, _ = torch.linalg.qr(torch.randn(cov.shape[0], k, generator=g, dtype=torch.float64))
    model = StiefelPCA(cov.to(dtype), q0.to(dtype), STIEFEL[retraction]())
    return ObjectiveTask(model.to(device))


class SimplexKL(nn.Module):
    """:math:`\\mathrm{KL}(q\\,\\|\\,p)` as a function of the distribution :math:`p` (module docstring)."""

    def __init__(self, target: torch.Tensor, start: torch.Tensor, manifold: geoopt.Manifold):
        super().__init__()
        self.register_buffer("target", target)  # (k,)
        self.p = geoopt.ManifoldParameter(start, manifold=manifold)  # (k,)

    def forward(self, *ignored) -> torch.Tensor:
        q = self.target
        return torch.sum(torch.xlogy(q, q) - torch.xlogy(q, self.p))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        return {f"p{i + 1}": float(v) for i, v in enumerate(self.p)}


def _distribution(values, name: str) -> torch.Tensor:
    p = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if p.dim() != 1 or len(p) < 2 or not bool((p > 0).all()) or abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"{name} must be at least two positive probabilities summing to 1, got {tuple(values)}")
    return p / p.sum()


def simplex_kl_task(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                    target: tuple[float, ...] = (0.7, 0.2, 0.1), start: tuple[float, ...] | None = None,
                    exact: bool = False) -> ObjectiveTask:
    """Fit :math:`p` to ``target`` from ``start`` (uniform when None); ``exact``: Riemannian optimizers step
    with the exponential map instead of the retraction. ``seed`` is unused (nothing is random)."""
    q = _distribution(target, "target")
    p0 = torch.full_like(q, 1.0 / len(q)) if start is None else _distribution(start, "start")
    if len(p0) != len(q):
        raise ValueError(f"start has {len(p0)} outcomes and target {len(q)}")
    manifold = (ProbabilitySimplexExact if exact else ProbabilitySimplex)()
    for name, p in (("start", p0), ("target", q)):  # checked in the task's dtype: 1e-300 is 0 in float32
        if float(p.to(dtype).min()) < manifold.floor:
            raise ValueError(f"{name} has a probability below {manifold.floor:g} in {dtype}, the smallest the "
                             f"simplex keeps: {tuple(p.tolist())}")
    return ObjectiveTask(SimplexKL(q.to(dtype), p0.to(dtype), manifold).to(device))
