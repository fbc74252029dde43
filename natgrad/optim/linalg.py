"""Numerics shared by every optimizer: robust symmetric eigendecompositions,
inverse matrix roots, and one record of what went wrong.

Shampoo (Gupta, Koren & Singer 2018, arXiv 1802.09568) preconditions with
inverse p-th roots of positive semi-definite statistics; K-FAC (Martens &
Grosse 2015, arXiv 1503.05671) with damped inverses of its Kronecker factors.
In float32 the eigensolver occasionally fails to converge or returns NaNs on
badly scaled matrices; production implementations retry in float64 and
otherwise keep the previous result (Shi et al. 2023, arXiv 2309.06497). This
module does exactly that and reports what happened as an :class:`Event` in an
:class:`EventLog` instead of failing silently.

Usage::

    root, event = matrix_inverse_root(S, p=4, eps=1e-12)   # S^(-1/4), regularised
    w, U, event = safe_eigh(S, previous=(w_old, U_old))
    r = robust_eigh(A)                                      # EighResult(evals, evecs, status, message)
    log = EventLog(); log.record(step, "eigh_failed", "layer1:A", "...")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch

MAX_EVENTS = 1000


@dataclass(frozen=True)
class Event:
    """One thing an optimizer noticed: a retried or failed decomposition, a skipped step, ...

    ``kind`` is a short machine-readable name (``"eigh_fp64_retry"``, ``"eigh_failed"``,
    ``"nonfinite_grad"``, ...), ``where`` the layer, block or factor it concerns (None:
    the whole step), ``message`` the explanation in words.
    """

    step: int
    kind: str
    where: str | None
    message: str

    def __str__(self) -> str:
        return f"step {self.step}" + (f", {self.where}" if self.where else "") + f": {self.message}"


class EventLog:
    """The newest :data:`MAX_EVENTS` events and a count per kind (counts never drop)."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self.limit = limit
        self.events: list[Event] = []
        self.counts: dict[str, int] = {}

    def record(self, step: int, kind: str, where: str | None = None, message: str = "") -> Event:
        event = Event(int(step), kind, where, message)
        self.events.append(event)
        del self.events[:-self.limit]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return event

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __iter__(self):
        return iter(self.events)

    def __getitem__(self, i):
        return self.events[i]

    def state_dict(self) -> dict[str, Any]:
        return {"events": [asdict(e) for e in self.events], "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = [Event(**e) for e in state["events"]]
        self.counts = dict(state["counts"])


class EighResult(NamedTuple):
    evals: torch.Tensor | None  # (d,), clamped at 0
    evecs: torch.Tensor | None  # (d, d), columns are eigenvectors
    status: str  # "ok" | "fp64_retry" | "failed"
    message: str

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
        if eigenvalues.shape[-1] == 0:  # a 0 x 0 matrix: nothing to regularise
            return eps
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


def robust_eigh(M: torch.Tensor) -> EighResult:
    """:func:`safe_eigh` (float64 retry) with eigenvalues clamped at 0 and failure
    reported as a status rather than an exception."""
    try:
        w, U, event = safe_eigh(M)
    except RootComputationError as exc:
        return EighResult(None, None, "failed", str(exc))
    return EighResult(w.clamp_min(0), U, "ok" if event is None else "fp64_retry", event or "")
