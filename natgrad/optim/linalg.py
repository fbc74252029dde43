"""Robust symmetric eigendecomposition and inverse matrix roots for Shampoo.

Shampoo (Gupta, Koren & Singer 2018, arXiv 1802.09568) preconditions with
inverse p-th roots of positive semi-definite statistics. In float32 the
eigensolver occasionally fails to converge or returns NaNs on badly scaled
matrices; production implementations retry in float64 and otherwise keep the
previous root (Shi et al. 2023, arXiv 2309.06497). This module does exactly
that and reports what happened as a short event string instead of failing
silently.

Usage::

    root, event = matrix_inverse_root(S, p=4, eps=1e-12)   # S^(-1/4), regularised
    w, U, event = safe_eigh(S, previous=(w_old, U_old))
"""

from __future__ import annotations

import torch

EPSILON_MODES = ("absolute", "relative")


class RootComputationError(RuntimeError):
    """The eigendecomposition failed in the working precision and in float64,
    and there was no previous result to fall back on."""


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether every entry is finite, via one sum per tensor (NaN and inf propagate
    through a sum; a finite sum that overflows reads as non-finite, which only
    triggers the float64 retry)."""
    return bool(torch.stack([t.sum() for t in tensors]).isfinite().all())


def _eigh_checked(M: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | str:
    """``torch.linalg.eigh`` of ``M`` in ``dtype``; on an exception or non-finite output,
    a short reason instead."""
    try:
        w, U = torch.linalg.eigh(M if M.dtype == dtype else M.to(dtype))
    except (RuntimeError, ValueError) as exc:  # torch raises torch.linalg.LinAlgError (a RuntimeError)
        return f"{type(exc).__name__}: {exc}"
    if not all_finite(w, U):
        return "non-finite eigendecomposition"
    return w, U


def safe_eigh(
    M: torch.Tensor, *, previous: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    r"""Eigendecomposition :math:`M = U \operatorname{diag}(\lambda) U^\top` of a
    symmetric matrix (or a batch ``(..., d, d)``), with a fallback chain.

    1. ``torch.linalg.eigh`` in ``M.dtype``;
    2. on an exception or any non-finite eigenvalue/eigenvector, again in
       float64, cast back to ``M.dtype`` (event ``"fp64 retry (<why the first
       attempt failed>)"``);
    3. if that fails too, ``previous`` (a ``(eigenvalues, eigenvectors)``
       tuple) is returned unchanged with an event naming both failures and
       ending in ``"previous kept"``; without ``previous``
       :class:`RootComputationError` is raised.

    Only the lower triangle of ``M`` is read (as ``torch.linalg.eigh`` does).
    MPS has no eigh kernel, so an MPS tensor is decomposed on the CPU and the
    result moved back. Used by both Shampoo (roots) and K-FAC (factor
    eigenbases).

    Returns ``(eigenvalues (..., d) ascending, eigenvectors (..., d, d), event)``
    with ``event`` None when the first attempt succeeded.
    """
    device = M.device
    work = M.cpu() if device.type == "mps" else M
    out = _eigh_checked(work, work.dtype)
    event = None
    if isinstance(out, str):
        why = f"{M.dtype}: {out}"
        if work.dtype != torch.float64:
            out = _eigh_checked(work, torch.float64)
            event = f"fp64 retry ({out if isinstance(out, str) else why})"
        if isinstance(out, str):
            failure = f"eigh failed in {why}" + (f"; float64 retry: {out}" if work.dtype != torch.float64 else "")
            if previous is None:
                raise RootComputationError(f"{failure} ({tuple(M.shape)} matrix; no previous result exists)")
            return previous[0], previous[1], f"{failure}; previous kept"
    w, U = out
    if w.dtype != M.dtype or w.device != device:
        w, U = w.to(device=device, dtype=M.dtype), U.to(device=device, dtype=M.dtype)
    return w, U, event


def effective_epsilon(eigenvalues: torch.Tensor, eps: float, epsilon_mode: str = "absolute") -> torch.Tensor | float:
    r"""The regulariser added to the (clamped) eigenvalues.

    ``"absolute"``: :math:`\epsilon`. ``"relative"``:
    :math:`\epsilon\,\lambda_{\max}` per matrix (falling back to :math:`\epsilon`
    where :math:`\lambda_{\max} \le 0`, so an all-zero statistic still has a
    finite root), shape ``(..., 1)`` for broadcasting.
    """
    if epsilon_mode == "absolute":
        return eps
    if epsilon_mode == "relative":
        lam_max = eigenvalues.amax(dim=-1, keepdim=True)  # (..., 1)
        return torch.where(lam_max > 0, eps * lam_max, torch.full_like(lam_max, eps))
    raise ValueError(f"epsilon_mode must be one of {EPSILON_MODES}, got {epsilon_mode!r}")


def matrix_inverse_root(
    M: torch.Tensor,
    p: float,
    eps: float,
    previous: torch.Tensor | None = None,
    *,
    epsilon_mode: str = "absolute",
) -> tuple[torch.Tensor, str | None]:
    r"""Regularised inverse p-th root of a symmetric PSD matrix (or batch).

    With :math:`M = U \operatorname{diag}(\lambda) U^\top` from :func:`safe_eigh`,

    .. math::

        M^{-1/p}_\epsilon = U \operatorname{diag}\big((\max(\lambda, 0) + \epsilon')^{-1/p}\big) U^\top,

    where :math:`\epsilon' = \epsilon` (``epsilon_mode="absolute"``, the
    convention of Gupta et al. 2018, whose statistics start at
    :math:`L_0 = \epsilon I`: for PSD ``M`` this is exactly
    :math:`(M + \epsilon I)^{-1/p}`) or :math:`\epsilon' = \epsilon\,\lambda_{\max}(M)`
    (``"relative"``, scale-invariant: multiplying ``M`` by ``c`` multiplies the
    root by :math:`c^{-1/p}`). Clamping at 0 removes the small negative
    eigenvalues rounding produces for singular statistics.

    On failure (see :func:`safe_eigh`) or a non-finite root, ``previous`` (the
    last good root) is returned with an event string; without ``previous``
    :class:`RootComputationError` is raised.

    Returns ``(root, event)``; ``event`` is None on a clean first attempt,
    one starting ``"fp64 retry"`` when float64 rescued it, or a message ending in
    ``"previous kept"``.
    """
    if p <= 0:
        raise ValueError(f"p must be positive, got {p}")
    # with a previous root, a failed decomposition comes back as (None, None, "...previous kept")
    w, U, event = safe_eigh(M, previous=None if previous is None else (None, None))  # (..., d), (..., d, d)
    if failed(event):
        return previous, event
    w = w.clamp_min(0)
    inv = (w + effective_epsilon(w, eps, epsilon_mode)).pow(-1.0 / p)  # (..., d)
    # U is finite and orthonormal, so the root is finite iff these d numbers are
    if not all_finite(inv):
        if previous is None:
            raise RootComputationError(
                f"inverse {p}-th root of a {tuple(M.shape)} {M.dtype} matrix is not finite "
                f"(eps={eps}, epsilon_mode={epsilon_mode!r}) and no previous root exists"
            )
        return previous, f"non-finite inverse root in {M.dtype}; previous kept"
    return (U * inv.unsqueeze(-2)) @ U.mT, event  # U diag(inv) U^T


def retried(event: str | None) -> bool:
    """Whether an event from this module means float64 rescued a failed decomposition."""
    return event is not None and event.startswith("fp64 retry")


def failed(event: str | None) -> bool:
    """Whether an event from this module means the previous result was kept."""
    return event is not None and event.endswith("previous kept")
