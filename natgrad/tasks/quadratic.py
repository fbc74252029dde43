r"""A quadratic with a Kronecker-structured Hessian, for comparing Shampoo's exponents.

Usage::

    from natgrad.tasks.quadratic import kron_quadratic
    q = kron_quadratic(m=16, n=16, cond_left=100.0, cond_right=100.0, seed=0)
    loss = q()                  # f(W), a scalar; W = q.weight starts at 0
    loss.backward()             # q.weight.grad equals q.gradient() = A (W - W*) B

The objective, for :math:`W, W^\star \in \mathbb{R}^{m \times n}`,
:math:`A \in \mathbb{R}^{m \times m}` (``left``) and :math:`B \in \mathbb{R}^{n \times n}`
(``right``) symmetric positive definite (named A and B, not L and R, so as not
to be confused with Shampoo's statistics):

.. math::

    f(W) = \tfrac12 \operatorname{tr}\big((W - W^\star)^\top A\, (W - W^\star)\, B\big),
    \qquad \nabla f(W) = A\, (W - W^\star)\, B,

so the minimum is :math:`f(W^\star) = 0` and the Hessian is :math:`B \otimes A`
acting on the column-stacked :math:`\operatorname{vec}(W)` (:math:`A \otimes B`
on the row-stacked one, which :meth:`KroneckerQuadratic.hessian` returns). Its
condition number is :math:`\kappa_A \kappa_B`. This is the structure Shampoo's
factors are built for (Gupta, Koren & Singer 2018, arXiv 1802.09568): with
:math:`-1/2` per factor Shampoo can take the Newton step on it (Morwani et al.
2025, arXiv 2406.17748; see ``tests/natgrad/test_shampoo.py``).

:math:`A = U \operatorname{diag}(\lambda) U^\top` with :math:`U` a random
rotation and eigenvalues spaced evenly on a log scale from 1 down to
:math:`1/\kappa_A` (likewise :math:`B` with :math:`V`, :math:`\kappa_B`), so the
rotation hides the curvature from a diagonal method such as Adam.
:math:`W^\star` has standard normal entries; :math:`W` starts at 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from natgrad.tasks.base import ObjectiveTask


class KroneckerQuadratic(nn.Module):
    r""":math:`f(W) = \frac12 \operatorname{tr}((W - W^\star)^\top A (W - W^\star) B)` (module docstring).

    ``forward(*ignored)`` returns the scalar loss; the inputs are ignored, so
    the module fits the ``model(x) -> loss`` shape of a training loop.
    """

    def __init__(self, left: torch.Tensor, right: torch.Tensor, w_star: torch.Tensor,
                 w0: torch.Tensor | None = None):
        super().__init__()
        m, n = w_star.shape
        if left.shape != (m, m) or right.shape != (n, n):
            raise ValueError(f"need A of shape {(m, m)} and B of shape {(n, n)}, got {tuple(left.shape)} "
                             f"and {tuple(right.shape)}")
        self.register_buffer("left", left)  # (m, m)
        self.register_buffer("right", right)  # (n, n)
        self.register_buffer("w_star", w_star)  # (m, n)
        self.weight = nn.Parameter(torch.zeros_like(w_star) if w0 is None else w0.clone())  # (m, n)

    def forward(self, *ignored) -> torch.Tensor:
        e = self.weight - self.w_star  # (m, n)
        return 0.5 * torch.sum((self.left @ e @ self.right) * e)  # = 1/2 tr(E^T A E B), A and B symmetric

    @torch.no_grad()
    def gradient(self) -> torch.Tensor:
        """Closed form :math:`A (W - W^\\star) B`, shape (m, n)."""
        return self.left @ (self.weight - self.w_star) @ self.right

    @torch.no_grad()
    def hessian(self) -> torch.Tensor:
        """:math:`A \\otimes B`, (mn, mn): the Hessian for the row-stacked ``W.reshape(-1)``."""
        return torch.kron(self.left, self.right)

    @torch.no_grad()
    def condition_number(self) -> float:
        """The Hessian's condition number, :math:`\\kappa_A \\kappa_B`, from the factors' eigenvalues."""
        a, b = torch.linalg.eigvalsh(self.left.double()), torch.linalg.eigvalsh(self.right.double())
        return float(a[-1] / a[0] * (b[-1] / b[0]))


def log_spectrum_matrix(dim: int, cond: float, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Random SPD ``(dim, dim)`` matrix :math:`U \\operatorname{diag}(\\lambda) U^\\top`, eigenvalues from 1
    down to ``1 / cond``, evenly spaced in log scale (all 1 when ``cond`` is 1)."""
    if dim < 1 or not 1 <= cond < math.inf:
        raise ValueError(f"need dim >= 1 and a finite condition number >= 1, got dim={dim}, cond={cond}")
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))  # (dim, dim)
    lam = torch.logspace(0.0, -math.log10(cond), dim, dtype=torch.float64)  # (dim,)
    spd = q @ torch.diag(lam) @ q.T
    out = (0.5 * (spd + spd.T)).to(dtype)
    if dtype != torch.float64 and torch.linalg.eigvalsh(out.double())[0] <= 0:
        raise ValueError(f"a condition number of {cond:g} is beyond {dtype}: rounded to it, the matrix is no longer "
                         "positive definite; use float64 or a smaller condition number")
    return out


def kron_quadratic(m: int = 16, n: int = 16, cond_left: float = 100.0, cond_right: float = 100.0, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> KroneckerQuadratic:
    """The quadratic of the module docstring; the same seed gives the same problem.

    ``cond_left``, ``cond_right``: condition numbers of ``A`` and ``B`` (the
    Hessian's is their product). Drawn in float64 from a private generator
    (the global RNG is untouched), then cast to ``dtype``.
    """
    g = torch.Generator().manual_seed(seed)
    left = log_spectrum_matrix(m, cond_left, g, dtype)
    right = log_spectrum_matrix(n, cond_right, g, dtype)
    w_star = torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype)
    return KroneckerQuadratic(left, right, w_star).to(device)


def kron_quadratic_task(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                        m: int = 16, n: int = 16, cond_left: float = 100.0, cond_right: float = 100.0) -> ObjectiveTask:
    """:func:`kron_quadratic` as a task (its options named, so that an unknown one is refused by name)."""
    return ObjectiveTask(kron_quadratic(m=m, n=n, cond_left=cond_left, cond_right=cond_right, seed=seed, dtype=dtype,
                                        device=device))
