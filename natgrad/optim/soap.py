r"""SOAP: Adam run in the eigenbasis of Shampoo's factors.

For a matrix parameter :math:`W` with gradient :math:`G_t` (Vyas et al. 2024,
arXiv 2409.11321, Algorithm 3; the authors' implementation
https://github.com/nikhilvyas/SOAP):

.. math::

    G'_t = Q_L^\top G_t Q_R, \qquad
    M'_t = \beta_1 M'_{t-1} + (1-\beta_1) G'_t, \qquad
    V_t = \beta_2 V_{t-1} + (1-\beta_2)\, G'_t \odot G'_t,

    W_t = W_{t-1} - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\;
          Q_L \Big(\frac{M'_t}{\sqrt{V_t} + \epsilon}\Big) Q_R^\top
          \quad(\text{then } W_t \leftarrow (1 - \eta\lambda) W_t \text{ with weight decay } \lambda),

    L_t = \beta_s L_{t-1} + (1-\beta_s) G_t G_t^\top, \qquad
    R_t = \beta_s R_{t-1} + (1-\beta_s) G_t^\top G_t,

and every ``precondition_frequency`` steps the eigenbases :math:`Q_L, Q_R` of
:math:`L, R` are refreshed. :math:`M'` is kept in the eigenbasis and carried
over to a new one (:math:`M' \leftarrow Q_{L,\mathrm{new}}^\top Q_L M' Q_R^\top
Q_{R,\mathrm{new}}`, i.e. the first moment of the gradients in the original
space, :math:`Q_L M' Q_R^\top`, is unchanged); :math:`V` stays per coordinate.
Shampoo with exponent :math:`-1/2` is Adafactor in this basis (Vyas et al.
2024, section 3); SOAP runs full Adam there, so its second moment adapts every
step while the expensive eigenbasis is refreshed rarely.

Refreshing (``eigenbasis``):

* ``"qr"`` (default, the authors' practical choice): one power iteration
  from the previous basis, :math:`Q \leftarrow \operatorname{qr}(L Q)`, after
  sorting the columns of :math:`Q` by the estimated eigenvalues
  :math:`\operatorname{diag}(Q^\top L Q)` (largest first) and permuting
  :math:`V` the same way;
* ``"eigh"``: a full eigendecomposition (:func:`natgrad.optim.linalg.safe_eigh`,
  float64 retry, previous basis kept on failure), eigenvectors by decreasing
  eigenvalue.

As in the authors' implementation, the first call with a gradient only
measures: it sets :math:`L, R` from :math:`G_1` and their eigenbases
(``eigh``), and leaves the parameter unchanged; Adam's step count starts at the
second call. Larger dimensions are cut into blocks of at most
``max_preconditioner_dim`` exactly as in Shampoo
(:func:`natgrad.optim.shampoo.blocks.plan_blocks`); every block has its own
factors and bases. 1-D (and 0-D) parameters get plain Adam (with SOAP's
:math:`\epsilon` after the square root of the uncorrected :math:`V`).
"""

from __future__ import annotations

import math
import time

import torch

from natgrad.optim.checkpoint import load_state_dict_keeping_dtypes, state_dict_with
from natgrad.optim.linalg import EventLog, all_finite, failed, retried, safe_eigh
from natgrad.optim.shampoo import blocks as sb
from natgrad.optim.shampoo.grafting import nonfinite_flags
from natgrad.optim.stepping import KeepsAttributes, begin_step, warn_on_manifold

EIGENBASES = ("qr", "eigh")


def rotate(x: torch.Tensor, bases: list[torch.Tensor], back: bool = False) -> torch.Tensor:
    r"""``x`` (a block, order ``k``) in the eigenbasis: :math:`Q_1^\top` applied along
    mode 1, ..., :math:`Q_k^\top` along mode ``k`` (a matrix: :math:`Q_L^\top X Q_R`);
    ``back=True`` applies :math:`Q_i` instead (a matrix: :math:`Q_L X Q_R^\top`)."""
    if len(bases) == 2:
        QL, QR = bases
        return QL @ x @ QR.mT if back else QL.mT @ x @ QR
    for Q in bases:  # contracting mode 0 each time cycles the modes back to their order
        x = torch.tensordot(x, Q.mT if back else Q, dims=([0], [0]))
    return x


class SOAP(KeepsAttributes, torch.optim.Optimizer):
    r"""SOAP (Vyas et al. 2024, arXiv 2409.11321). Update rule: module docstring.

    Args:
        params: parameters, parameter groups, or ``named_parameters()`` (names
            label blocks in events).
        lr: step size :math:`\eta`.
        betas: :math:`(\beta_1, \beta_2)` of Adam in the eigenbasis.
        shampoo_beta: :math:`\beta_s`, the decay of the factors (default :math:`\beta_2`).
        eps: :math:`\epsilon`, added to :math:`\sqrt{V}`.
        weight_decay: decoupled, applied after the step as in the authors' code.
        precondition_frequency: eigenbases are refreshed after Adam steps
            ``f, 2f, ...``.
        max_preconditioner_dim: larger dimensions are cut into blocks.
        eigenbasis: ``"qr"`` (one power iteration and QR) or ``"eigh"``.
        preconditioner_dtype: dtype of the factors and bases (default: the parameter's).
        skip_nonfinite: a step whose gradients hold NaN/inf changes nothing and is
            logged in ``events`` (``"nonfinite_grad"``).

    Parameters without a gradient are left alone (their state too). A refresh
    whose result is not finite (also after a float64 retry) keeps the previous
    basis and is logged.
    """

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95), *,
                 shampoo_beta: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                 precondition_frequency: int = 10, max_preconditioner_dim: int = 1024, eigenbasis: str = "qr",
                 preconditioner_dtype: torch.dtype | None = None, skip_nonfinite: bool = True):
        b1, b2 = betas
        bs = b2 if shampoo_beta is None else shampoo_beta
        if not lr >= 0 or not 0 <= b1 < 1 or not 0 <= b2 < 1 or not 0 <= bs < 1 or not 0 <= eps < math.inf \
                or not 0 <= weight_decay < math.inf:  # (NaN fails every comparison)
            raise ValueError(f"need lr, eps, weight_decay >= 0 and betas, shampoo_beta in [0, 1) (got lr={lr}, "
                             f"betas={betas}, shampoo_beta={bs}, eps={eps}, weight_decay={weight_decay})")
        if precondition_frequency < 1 or max_preconditioner_dim < 1:
            raise ValueError("precondition_frequency and max_preconditioner_dim must be >= 1")
        if eigenbasis not in EIGENBASES:
            raise ValueError(f"eigenbasis must be one of {EIGENBASES}, got {eigenbasis!r}")
        defaults = dict(lr=lr, betas=(b1, b2), shampoo_beta=bs, eps=eps, weight_decay=weight_decay,
                        precondition_frequency=precondition_frequency, max_preconditioner_dim=max_preconditioner_dim,
                        eigenbasis=eigenbasis, preconditioner_dtype=preconditioner_dtype)
        super().__init__(params, defaults)
        warn_on_manifold(self)
        self.skip_nonfinite = skip_nonfinite
        self.events = EventLog()
        self.basis_computations = 0
        self.basis_seconds = 0.0
        self.basis_failures = 0
        self.fp64_retries = 0
        self.skipped_steps = 0
        self._steps_taken = 0

    # ---------------------------------------------------------------- blocks
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._plan = None

    def blocks(self) -> dict[torch.Tensor, list[sb.Block]]:
        """Every parameter's blocks (Shampoo's planner), in ``param_groups`` order."""
        if getattr(self, "_plan", None) is None:
            plan, index = {}, 0
            for group in self.param_groups:
                names = group.get("param_names") or [None] * len(group["params"])
                for p, name in zip(group["params"], names, strict=True):
                    plan[p] = sb.plan_blocks(tuple(p.shape), group["max_preconditioner_dim"], index,
                                             name or f"param{index}", group["preconditioner_dtype"] or p.dtype)
                    index += 1
            self._plan = plan
        return self._plan

    # ------------------------------------------------------------------ step
    def _record(self, kind: str, where: str | None, message: str) -> None:
        self.events.record(self._steps_taken, kind, where, message)

    @torch.no_grad()
    def step(self, closure=None):
        """One SOAP step (module docstring); returns ``closure()``'s loss if given."""
        loss, work = begin_step(self, closure)
        if not work:
            return loss
        if self.skip_nonfinite:
            found = nonfinite_flags([p.grad for _, ps in work for p in ps])
            if bool(found.any()):
                self.skipped_steps += 1
                self._record("nonfinite_grad", None, "step skipped: non-finite gradient in parameter(s) "
                             f"{torch.nonzero(found).flatten().tolist()} (numbered among those with gradients)")
                return loss
        for group, ps in work:
            fresh = [p for p in ps if not self.state[p]]
            for p in fresh:
                self._init_state(p, group)
            live = [p for p in ps if p not in set(fresh)]
            if live:
                self._adam_in_eigenbasis(group, live)
        self._steps_taken += 1
        return loss

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """The measuring first call: factors from ``G_1``, their eigenbases, zero moments."""
        state = self.state[p]
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["blocks"] = {}
        g = p.grad.reshape(-1) if p.dim() == 0 else p.grad
        for blk in self.blocks()[p]:
            if blk.diagonal:
                continue
            bstate = {"factors": [torch.zeros(d, d, dtype=blk.dtype, device=p.device) for d in blk.shape],
                      "bases": [torch.eye(d, dtype=blk.dtype, device=p.device) for d in blk.shape]}
            sb.update_statistics(blk, bstate, g[blk.slices], group["shampoo_beta"])
            self._refresh(blk, bstate, None, "eigh")
            state["blocks"][blk.key[1]] = bstate

    def _adam_in_eigenbasis(self, group: dict, ps: list[torch.Tensor]) -> None:
        b1, b2 = group["betas"]
        lr, eps, wd, freq = group["lr"], group["eps"], group["weight_decay"], group["precondition_frequency"]
        plan = self.blocks()
        states = [self.state[p] for p in ps]
        for st in states:
            st["step"] += 1
        grads = [p.grad.reshape(1) if p.dim() == 0 else p.grad for p in ps]
        rotated = [self._to_eigenbasis(plan[p], st, g) for p, st, g in zip(ps, states, grads, strict=True)]
        ms, vs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        ms_v = [m.view_as(r) for m, r in zip(ms, rotated, strict=True)]
        vs_v = [v.view_as(r) for v, r in zip(vs, rotated, strict=True)]
        torch._foreach_lerp_(ms_v, rotated, 1 - b1)
        torch._foreach_mul_(vs_v, b2)
        torch._foreach_addcmul_(vs_v, rotated, rotated, value=1 - b2)
        den = torch._foreach_sqrt(vs_v)
        torch._foreach_add_(den, eps)
        ns = torch._foreach_div(ms_v, den)
        updates = [self._from_eigenbasis(plan[p], st, n).view_as(p) for p, st, n in zip(ps, states, ns, strict=True)]
        by_size: dict[float, list[int]] = {}
        for i, st in enumerate(states):
            t = st["step"]
            by_size.setdefault(lr * (1 - b2**t) ** 0.5 / (1 - b1**t), []).append(i)
        for size, idx in by_size.items():
            torch._foreach_add_([ps[i] for i in idx], [updates[i] for i in idx], alpha=-size)
        if wd:
            torch._foreach_mul_(ps, 1 - lr * wd)
        for p, st, g in zip(ps, states, grads, strict=True):
            blocks = plan[p]
            due = st["step"] % freq == 0
            for blk in blocks:
                if blk.diagonal:
                    continue
                bstate = st["blocks"][blk.key[1]]
                sb.update_statistics(blk, bstate, g if len(blocks) == 1 else g[blk.slices], group["shampoo_beta"])
                if due:
                    self._refresh(blk, bstate, st, group["eigenbasis"], whole=len(blocks) == 1)

    # ------------------------------------------------------ the eigenbasis
    def _blockwise(self, blocks: list[sb.Block], st: dict, x: torch.Tensor, back: bool) -> torch.Tensor:
        if len(blocks) == 1:
            return self._rotate_block(blocks[0], st, x, back)
        out = torch.empty_like(x)
        for blk in blocks:
            out[blk.slices] = self._rotate_block(blk, st, x[blk.slices], back)
        return out

    @staticmethod
    def _rotate_block(blk: sb.Block, st: dict, x: torch.Tensor, back: bool) -> torch.Tensor:
        if blk.diagonal:
            return x
        y = x if x.dtype == blk.dtype else x.to(blk.dtype)
        y = rotate(y, st["blocks"][blk.key[1]]["bases"], back)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _to_eigenbasis(self, blocks, st, g):
        return self._blockwise(blocks, st, g, back=False)

    def _from_eigenbasis(self, blocks, st, x):
        return self._blockwise(blocks, st, x, back=True)

    def _refresh(self, blk: sb.Block, bstate: dict, st: dict | None, how: str, whole: bool = True) -> None:
        """New bases for every factor of ``blk``; ``st`` (the parameter's state, None on
        the first call) has its first moment carried over to them and, for ``"qr"``, its
        second moment permuted with the sorted columns. ``whole``: the block is the
        whole parameter."""
        t0 = time.perf_counter()
        old = [Q.clone() for Q in bstate["bases"]] if st is not None else None

        def region(x: torch.Tensor) -> torch.Tensor:  # the block's part of a parameter-shaped tensor
            return x.view(blk.shape) if whole else x[blk.slices]

        for i, (S, Q) in enumerate(zip(bstate["factors"], bstate["bases"], strict=True)):
            new, order, event = (_power_qr(S, Q) if how == "qr" else _eigh_basis(S, Q))
            if event is not None:
                self.basis_failures += failed(event)
                self.fp64_retries += retried(event)
                self._record("basis_failed" if failed(event) else "basis_fp64_retry", f"block {blk.name}, factor {i}",
                             event)
            if order is not None and st is not None:
                v = region(st["exp_avg_sq"])
                v.copy_(v.index_select(i, order.to(v.device)))
            Q.copy_(new)
        self.basis_computations += len(bstate["bases"])
        if st is not None:
            m = region(st["exp_avg"])
            y = m if m.dtype == blk.dtype else m.to(blk.dtype)
            m.copy_(rotate(rotate(y, old, back=True), bstate["bases"]))
        self.basis_seconds += time.perf_counter() - t0

    # ------------------------------------------------------- introspection
    def preconditioner_bytes(self) -> int:
        """Bytes of factors and bases (as Shampoo's statistics and roots) plus Adam's two moments."""
        blocks = sum(b.preconditioner_bytes if not b.diagonal else 0 for bl in self.blocks().values() for b in bl)
        return blocks + sum(2 * p.numel() * p.element_size() for p in self.blocks())

    def stats(self) -> dict:
        owned = [b for bl in self.blocks().values() for b in bl]
        return dict(num_blocks=len(owned), num_diagonal_blocks=sum(b.diagonal for b in owned),
                    preconditioner_bytes=self.preconditioner_bytes(), basis_computations=self.basis_computations,
                    basis_seconds=self.basis_seconds, basis_failures=self.basis_failures,
                    fp64_retries=self.fp64_retries, skipped_steps=self.skipped_steps, events=len(self.events))

    # --------------------------------------------------------- checkpoints
    _COUNTERS = ("basis_computations", "basis_seconds", "basis_failures", "fp64_retries", "skipped_steps",
                 "_steps_taken")

    def state_dict(self) -> dict:
        return state_dict_with(self, "soap", self._COUNTERS)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`, keeping every tensor's dtype (moved to its parameter's device)."""
        load_state_dict_keeping_dtypes(self, state_dict, "soap")
        self._plan = None


def _eigh_basis(S: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, None, str | None]:
    """Eigenvectors of ``S`` by decreasing eigenvalue (``Q`` kept if the decomposition fails)."""
    _, U, event = safe_eigh(S, previous=(None, Q))
    return (Q if failed(event) else U.flip(-1)), None, event


def _power_qr(S: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, str | None]:
    r"""One power iteration from ``Q``: sort its columns by :math:`\operatorname{diag}(Q^\top S Q)`
    (largest first), then :math:`\operatorname{qr}(S Q)`. Returns the new basis, the sort
    order (None when the previous basis is kept) and an event."""
    why = None
    for dtype in dict.fromkeys((S.dtype, torch.float64)):
        S_, Q_ = S.to(dtype), Q.to(dtype)
        SQ = S_ @ Q_
        order = torch.argsort((Q_ * SQ).sum(0), descending=True)  # diag(Q^T S Q), largest first
        try:
            new, _ = torch.linalg.qr(SQ[:, order])
        except RuntimeError as exc:  # torch.linalg.LinAlgError
            why = f"{type(exc).__name__}: {exc}"
            continue
        if all_finite(new):
            event = None if dtype == S.dtype else f"fp64 retry ({S.dtype}: {why})"
            return new.to(S.dtype), order, event
        why = why or "non-finite power iteration"
    return Q, None, f"QR of the power iteration failed ({why}); previous kept"
