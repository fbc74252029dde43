r"""Shampoo with grafting, blocking and amortised inverse roots.

Update for a matrix parameter :math:`W` with gradient :math:`G_t` at step ``t``
(Gupta, Koren & Singer 2018, arXiv 1802.09568):

.. math::

    L_t = L_{t-1} + G_t G_t^\top,\quad R_t = R_{t-1} + G_t^\top G_t
    \quad(\text{or EMAs with } \beta_2,\ \text{bias-corrected}),

    m_t = \beta_1 m_{t-1} + (1-\beta_1) G_t,\quad \hat m_t = m_t / (1-\beta_1^t),

    S_t = L^{-1/p}_\epsilon\, \hat m_t\, R^{-1/p}_\epsilon,\qquad p = 4 \ (\text{order } k:\ p = 2k),

    U_t = S_t\, \frac{\lVert A_t \rVert_F}{\lVert S_t \rVert_F}\quad(\text{layer-wise grafting}),

    W_t = W_{t-1} - \eta\, U_t \quad(\text{after optional heavy-ball momentum and weight decay}),

where :math:`A_t` is the graft's step (SGD :math:`\hat m_t`, AdaGrad, RMSprop
or Adam :math:`\hat m_t / (\sqrt{\hat v_t} + \epsilon_g)`; Agarwal et al.
2020, arXiv 2002.11803) and :math:`X^{-1/p}_\epsilon` is the regularised
inverse root of :func:`natgrad.optim.linalg.matrix_inverse_root`
(:math:`(X + \epsilon I)^{-1/p}`, i.e. :math:`L_0 = \epsilon I`). Why
:math:`-1/4`: full-matrix AdaGrad applies :math:`H^{-1/2}`, and Gupta et al.
bound :math:`H \preceq r\, L^{1/2} \otimes R^{1/2}`. Morwani et al. 2025
(arXiv 2406.17748) argue for :math:`-1/2` per factor: pass
``exponent_override=2``. Roots are recomputed every ``precondition_frequency``
steps; before ``start_preconditioning_step`` the update *is* the graft
(exactly ``torch.optim.Adam``/``Adagrad``/``RMSprop``/``SGD`` for the matching
settings). Distributed sharding of the blocks: Anil et al. 2020
(arXiv 2002.09018), Shi et al. 2023 (arXiv 2309.06497); see
:mod:`natgrad.optim.shampoo.distributed`.
"""

from __future__ import annotations

import math
import time

import torch

from natgrad.optim.checkpoint import load_state_dict_keeping_dtypes, state_dict_with
from natgrad.optim.linalg import EPSILON_MODES, EventLog, failed, retried
from natgrad.optim.shampoo import blocks as sb
from natgrad.optim.shampoo.grafting import GRAFTS, graft_denominators, nonfinite_flags
from natgrad.optim.stepping import KeepsAttributes, begin_step, warn_on_manifold


class Shampoo(KeepsAttributes, torch.optim.Optimizer):
    r"""Shampoo (Gupta et al. 2018) with the practical parts of Distributed
    Shampoo (Anil et al. 2020; Shi et al. 2023). Update rule: module docstring.

    Args:
        params: parameters, parameter groups, or ``named_parameters()`` (names
            then label blocks in :meth:`stats` and reports).
        lr: step size :math:`\eta`.
        beta1: EMA of the gradient (bias-corrected) that is preconditioned and
            grafted; 0 preconditions the raw gradient.
        statistics: ``"sum"`` (AdaGrad-style :math:`L \mathrel{+}= GG^\top`) or
            ``"ema"`` (:math:`L \leftarrow \beta_2 L + (1-\beta_2) GG^\top`,
            divided by :math:`1-\beta_2^t` before the root).
        beta2: decay of the ``"ema"`` statistics.
        epsilon, epsilon_mode: regulariser of the roots, ``"absolute"``
            (:math:`\lambda + \epsilon`) or ``"relative"``
            (:math:`\lambda + \epsilon\lambda_{\max}`).
        exponent_override: ``p`` so that every Kronecker factor gets
            :math:`X^{-1/p}`; default ``2k`` for an order-``k`` block. Diagonal
            (1-D) blocks always use :math:`-1/2`.
        precondition_frequency: roots are recomputed at
            ``t = start, start + f, start + 2f, ...``.
        start_preconditioning_step: first step that uses Shampoo's direction
            (default ``precondition_frequency``); earlier steps are the graft.
        grafting: ``"sgd"``, ``"adagrad"``, ``"rmsprop"``, ``"adam"`` or None
            (no norm rescaling; before the start the step is then :math:`\hat m_t`).
        graft_beta2, graft_eps: the graft's second-moment decay (RMSprop, Adam)
            and :math:`\epsilon_g` (added after the square root, as in torch).
            Before the start, ``grafting="adam"`` with ``beta1=b1, graft_beta2=b2,
            graft_eps=e`` is ``torch.optim.Adam(betas=(b1, b2), eps=e)`` bit for bit
            (``AdamW`` with decoupled weight decay); with ``beta1=0``,
            ``"adagrad"``/``"rmsprop"``/``"sgd"`` are ``Adagrad(eps=graft_eps)``,
            ``RMSprop(alpha=graft_beta2, eps=graft_eps)`` and ``SGD(momentum=momentum)``.
        max_preconditioner_dim: dimensions larger than this are cut into blocks.
        tensors: how a parameter with 3 or more axes (a convolution kernel
            ``(out, in, kh, kw)``) is preconditioned: ``"modes"``, one factor per
            axis; ``"matrix"``, as the ``(out, in*kh*kw)`` matrix (exactly Shampoo on
            that reshaped parameter). See :mod:`natgrad.optim.shampoo.blocks`.
        skip_preconditioning_rank_lt: parameters with fewer axes than this keep
            no statistics and take the graft's step alone (the option of Anil et
            al.'s implementation of that name): 2 leaves biases and gains to the
            graft (Adam). Default 0: vectors get diagonal blocks.
        momentum: heavy-ball momentum on the final update, torch ``SGD``
            convention (:math:`b \leftarrow \mu b + U`, first :math:`b = U`).
        weight_decay, decoupled_weight_decay: decoupled (AdamW:
            :math:`W \leftarrow (1-\eta\lambda) W` before the update, default) or
            L2 (:math:`\lambda W` added to the gradient before everything).
        preconditioner_dtype: dtype of statistics and roots (default: the
            parameter's), e.g. ``torch.float64`` for float32 parameters.
        skip_nonfinite: a step whose gradients contain NaN/inf changes nothing
            (parameters, state, step count), is counted in ``skipped_steps`` and
            logged in ``events``; False lets NaN flow into the statistics (the
            next roots then fail and keep the previous ones).

    A root that fails in the working precision is retried in float64; if that
    fails or is not finite, the previous root (identity before the first) is
    kept, ``root_failures`` is incremented and the event appended to ``events``.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta1: float = 0.9,
        *,
        statistics: str = "sum",
        beta2: float = 0.999,
        epsilon: float = 1e-12,
        epsilon_mode: str = "absolute",
        exponent_override: float | None = None,
        precondition_frequency: int = 1,
        start_preconditioning_step: int | None = None,
        grafting: str | None = "adam",
        graft_beta2: float = 0.999,
        graft_eps: float = 1e-8,
        max_preconditioner_dim: int = 1024,
        tensors: str = "modes",
        skip_preconditioning_rank_lt: int = 0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        preconditioner_dtype: torch.dtype | None = None,
        skip_nonfinite: bool = True,
    ):
        if not lr >= 0 or not 0 <= beta1 < 1 or not 0 < beta2 < 1 or not 0 <= momentum < 1:  # (NaN fails too)
            raise ValueError(f"need lr >= 0, 0 <= beta1 < 1, 0 < beta2 < 1, 0 <= momentum < 1 (got {lr}, {beta1}, "
                             f"{beta2}, {momentum})")
        for name, value, allowed in (("statistics", statistics, ("sum", "ema")), ("grafting", grafting, GRAFTS),
                                     ("epsilon_mode", epsilon_mode, EPSILON_MODES), ("tensors", tensors, sb.TENSOR_LAYOUTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if precondition_frequency < 1 or max_preconditioner_dim < 1 or not 0 <= epsilon < math.inf \
                or not 0 <= weight_decay < math.inf:
            raise ValueError("precondition_frequency and max_preconditioner_dim must be >= 1, epsilon and "
                             f"weight_decay finite and >= 0 (got {epsilon}, {weight_decay})")
        if not 0 <= graft_beta2 < 1 or not 0 <= graft_eps < math.inf:
            raise ValueError(f"need 0 <= graft_beta2 < 1 and a finite graft_eps >= 0 (got {graft_beta2}, {graft_eps})")
        if exponent_override is not None and exponent_override <= 0:
            raise ValueError(f"exponent_override must be positive, got {exponent_override}")
        start = precondition_frequency if start_preconditioning_step is None else start_preconditioning_step
        defaults = dict(lr=lr, beta1=beta1, statistics=statistics, beta2=beta2, epsilon=epsilon,
                        epsilon_mode=epsilon_mode, exponent_override=exponent_override,
                        precondition_frequency=precondition_frequency, start_preconditioning_step=max(int(start), 1),
                        grafting=grafting, graft_beta2=graft_beta2, graft_eps=graft_eps,
                        max_preconditioner_dim=max_preconditioner_dim, tensors=tensors, momentum=momentum,
                        skip_preconditioning_rank_lt=skip_preconditioning_rank_lt, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, preconditioner_dtype=preconditioner_dtype)
        super().__init__(params, defaults)
        warn_on_manifold(self)
        if any(p.dtype == torch.float16 for g in self.param_groups for p in g["params"]):
            # float16 tops out at 65504: an inverse root of small statistics, or the direction before grafting
            # rescales it, overflows to inf and the parameters become inf/NaN from the first step
            raise ValueError("Shampoo does not take float16 parameters: its inverse roots overflow float16's range "
                             "(largest 65504). Keep float32 parameters (torch.autocast computes in float16 where "
                             "that is safe) or use bfloat16.")
        self.skip_nonfinite = skip_nonfinite
        self.root_failures = 0
        self.fp64_retries = 0
        self.skipped_steps = 0
        self.root_computations = 0
        self.root_seconds = 0.0
        self.events = EventLog()
        self._steps_taken = 0  # optimizer steps that changed something (for event records)

    # ---------------------------------------------------------------- blocks
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._plan = None  # re-plan lazily

    def blocks(self) -> dict[torch.Tensor, list[sb.Block]]:
        """Every parameter's blocks, in ``param_groups`` order (parameter indices are global)."""
        if getattr(self, "_plan", None) is None:
            plan, index = {}, 0
            for group in self.param_groups:
                names = group.get("param_names") or [None] * len(group["params"])
                for p, name in zip(group["params"], names, strict=True):
                    dtype = group["preconditioner_dtype"] or p.dtype
                    skip = p.dim() < group.get("skip_preconditioning_rank_lt", 0)
                    plan[p] = [] if skip else sb.plan_blocks(tuple(p.shape), group["max_preconditioner_dim"], index,
                                             name or f"param{index}", dtype, group.get("tensors", "modes"))
                    index += 1
            self._plan = plan
        return self._plan

    def _owns(self, key: tuple[int, int]) -> bool:
        """Whether this process holds the block's statistics (all of them here)."""
        return True

    def _prepare_grads(self, params: list[torch.Tensor]) -> None:
        """Hook before the step (the distributed subclass averages gradients)."""

    def _exchange(self, directions: dict, active: list[sb.Block]) -> dict:
        """Hook: return directions for every block in ``active`` (single process: as is)."""
        return directions

    # ----------------------------------------------------------------- step
    def _record(self, kind: str, where: str | None, message: str) -> None:
        self.events.record(self._steps_taken, kind, where, message)

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """The state ``p`` needs under its group's current settings: all of it at the first step; later, what a
        changed setting needs (beta1 raised from 0, a graft with a second moment), started at zero."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["blocks"] = {b.key[1]: sb.init_block_state(b, p.device) for b in self.blocks()[p] if self._owns(b.key)}
        if group["beta1"] > 0 and "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["grafting"] in ("adagrad", "rmsprop", "adam") and "graft" not in state:
            state["graft"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _nonfinite(self, grads: list[torch.Tensor]) -> bool:
        if not self.skip_nonfinite:
            return False
        found = nonfinite_flags(grads)
        if not bool(found.any()):
            return False
        bad = torch.nonzero(found).flatten().tolist()
        self.skipped_steps += 1
        self._record("nonfinite_grad", None, f"step skipped: non-finite gradient in parameter(s) {bad} "
                     "(numbered among those with gradients)")
        return True

    @torch.no_grad()
    def step(self, closure=None):
        """One Shampoo step (see the class docstring); returns ``closure()``'s loss if given."""
        loss, work = begin_step(self, closure)
        self._prepare_grads([p for _, ps in work for p in ps])
        if not work or self._nonfinite([p.grad for _, ps in work for p in ps]):
            return loss
        plan, directions, active, todo = self.blocks(), {}, [], []
        for group, ps in work:
            states = [self.state[p] for p in ps]
            for p, st in zip(ps, states, strict=True):
                self._init_state(p, group)
                st["step"] += 1
            ts = [st["step"] for st in states]
            grads = [p.grad for p in ps]
            if group["weight_decay"] and not group["decoupled_weight_decay"]:
                grads = torch._foreach_add(grads, ps, alpha=group["weight_decay"])  # L2
            beta1 = group["beta1"]
            nums = grads
            if beta1 > 0:
                nums = [st["exp_avg"] for st in states]
                torch._foreach_lerp_(nums, grads, 1 - beta1)
            cs = [1 - beta1**t for t in ts]  # first-moment bias corrections (1.0 when beta1 = 0)
            dens = graft_denominators(group["grafting"], group["graft_beta2"], group["graft_eps"],
                                      [st.get("graft") for st in states], grads, ts)
            start, freq = group["start_preconditioning_step"], group["precondition_frequency"]
            on = [t >= start and bool(plan[p]) for t, p in zip(ts, ps, strict=True)]  # skipped: graft only
            m_hats = [None] * len(ps)  # first moments of the preconditioned parameters
            live = [i for i in range(len(ps)) if on[i]]
            if live:
                mh = [nums[i] for i in live]
                # grafting fixes the norm, so the bias correction only matters without it
                if group["grafting"] is None and any(cs[i] != 1.0 for i in live):
                    mh = torch._foreach_div(mh, [cs[i] for i in live])
                for i, x in zip(live, mh, strict=True):
                    m_hats[i] = x
            roots_now = [on[i] and (ts[i] - start) % freq == 0 for i in range(len(ps))]
            self._shampoo_group(group, ps, states, grads, m_hats, ts, roots_now, directions, active)
            todo.append((group, ps, nums, dens, cs, on))
        directions = self._exchange(directions, active)
        for group, ps, nums, dens, cs, on in todo:
            self._apply(group, ps, nums, dens, cs, on, plan, directions)
        self._steps_taken += 1
        return loss

    def _shampoo_group(self, group, ps, states, grads, m_hats, ts, roots_now, directions, active) -> None:
        """Update the statistics of this process's blocks, recompute due roots, and
        precondition ``m_hat`` block by block (None: not preconditioned yet)."""
        ema = group["statistics"] == "ema"
        beta2 = group["beta2"] if ema else None
        plan, diagonal = self.blocks(), []
        for p, state, g, m_hat, t, now in zip(ps, states, grads, m_hats, ts, roots_now, strict=True):
            blocks = plan[p]
            bc2 = 1 - group["beta2"] ** t if ema else 1.0
            if m_hat is not None:
                active.extend(blocks)
            if blocks and g.shape != blocks[0].view:  # 0-D, or a tensor blocked as a matrix
                g, m_hat = g.reshape(blocks[0].view), (None if m_hat is None else m_hat.reshape(blocks[0].view))
            for blk in blocks:
                if not self._owns(blk.key):
                    continue
                bstate = state["blocks"][blk.key[1]]
                if blk.diagonal:
                    diagonal.append((blk, bstate, g, m_hat, bc2))
                    continue
                sb.update_statistics(blk, bstate, g if len(blocks) == 1 else g[blk.slices], beta2)
                if now:
                    self._roots(group, blk, bstate, t, bc2)
                if m_hat is not None:
                    directions[blk.key] = sb.precondition(blk, bstate, m_hat if len(blocks) == 1 else m_hat[blk.slices])
        if diagonal:
            directions.update(sb.diagonal_blocks(diagonal, beta2, group["epsilon"], group["epsilon_mode"]))

    def _roots(self, group, blk, bstate, t, bc2) -> None:
        exponent = group["exponent_override"] or 2 * len(blk.shape)
        t0 = time.perf_counter()
        events = sb.compute_roots(blk, bstate, exponent, group["epsilon"], group["epsilon_mode"], bc2)
        self.root_seconds += time.perf_counter() - t0
        self.root_computations += len(events)
        for i, ev in enumerate(events):
            if ev is not None:
                self.root_failures += failed(ev)
                self.fp64_retries += retried(ev)
                self._record("root_failed" if failed(ev) else "root_fp64_retry", f"block {blk.name}, factor {i}",
                             f"parameter step {t}: {ev}")

    def _apply(self, group, ps, nums, dens, cs, on, plan, directions) -> None:
        lr, wd, mu = float(group["lr"]), group["weight_decay"], group["momentum"]  # (a tensor lr, as torch allows)
        decay = 1 - lr * wd if wd and group["decoupled_weight_decay"] else None
        graft_only = [i for i in range(len(ps)) if not on[i]] if mu == 0 else []
        if graft_only:  # the pure graft, with the arithmetic of torch.optim's single-tensor loops
            pg = [ps[i] for i in graft_only]
            if decay is not None:
                torch._foreach_mul_(pg, decay)
            if dens is None:
                for i in graft_only:
                    ps[i].add_(nums[i], alpha=-(lr / cs[i]))
            else:
                torch._foreach_addcdiv_(pg, [nums[i] for i in graft_only], [dens[i] for i in graft_only],
                                        [-(lr / cs[i]) for i in graft_only])
        rest = [i for i in range(len(ps)) if i not in set(graft_only)]
        if not rest:
            return
        a = [nums[i] for i in rest]  # graft steps A_t, times (1 - beta1^t)
        if dens is not None:
            a = torch._foreach_div(a, [dens[i] for i in rest])
        us = [x if on[i] or cs[i] == 1.0 else x / cs[i] for i, x in zip(rest, a, strict=True)]
        scales: list = [None] * len(rest)  # the update is us[j] * scales[j]
        shampoo = [j for j, i in enumerate(rest) if on[i]]
        if shampoo:
            for j in shampoo:
                us[j] = sb.assemble(ps[rest[j]], plan[ps[rest[j]]], directions)
            if group["grafting"] is not None:  # layer-wise grafting: Shampoo's direction, the graft's norm
                norms = torch.stack(torch._foreach_norm([a[j] for j in shampoo] + [us[j] for j in shampoo]))
                na, ns = norms[:len(shampoo)], norms[len(shampoo):]
                if any(cs[rest[j]] != 1.0 for j in shampoo):
                    na = na / torch.tensor([cs[rest[j]] for j in shampoo], dtype=na.dtype, device=na.device)
                for j, r in zip(shampoo, (na / ns.clamp_min(torch.finfo(ns.dtype).tiny)).unbind(), strict=True):
                    scales[j] = r
        pr = [ps[i] for i in rest]
        if decay is not None:
            torch._foreach_mul_(pr, decay)
        if mu > 0:
            for j, p in enumerate(pr):
                u = us[j] if scales[j] is None else us[j] * scales[j]
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = u.clone()
                else:
                    state["momentum_buffer"].mul_(mu).add_(u)
                p.add_(state["momentum_buffer"], alpha=-lr)
            return
        scaled = [j for j in range(len(pr)) if scales[j] is not None]
        plain = [j for j in range(len(pr)) if scales[j] is None]
        if scaled:
            torch._foreach_addcmul_([pr[j] for j in scaled], [us[j] for j in scaled], [scales[j] for j in scaled],
                                    value=-lr)
        if plain:
            torch._foreach_add_([pr[j] for j in plain], [us[j] for j in plain], alpha=-lr)

    # ------------------------------------------------------- introspection
    def preconditioner_bytes(self) -> int:
        """Bytes of statistics and roots this process holds (diagonal blocks: the statistic)."""
        return sum(b.preconditioner_bytes for bl in self.blocks().values() for b in bl if self._owns(b.key))

    def stats(self) -> dict:
        """Counters for labs: blocks, bytes, root computations/time/failures, skipped steps."""
        owned = [b for bl in self.blocks().values() for b in bl if self._owns(b.key)]
        return dict(
            num_blocks=len(owned),
            num_diagonal_blocks=sum(b.diagonal for b in owned),
            preconditioner_bytes=self.preconditioner_bytes(),
            root_computations=self.root_computations,
            root_seconds=self.root_seconds,
            root_failures=self.root_failures,
            fp64_retries=self.fp64_retries,
            skipped_steps=self.skipped_steps,
            events=len(self.events),
        )

    # --------------------------------------------------------- checkpoints
    _COUNTERS = ("root_failures", "fp64_retries", "skipped_steps", "root_computations", "root_seconds", "_steps_taken")

    def state_dict(self) -> dict:
        return state_dict_with(self, "shampoo", self._COUNTERS)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict`. Unlike the base class this keeps every
        tensor's dtype (e.g. float64 statistics of float32 parameters) and
        moves it to its parameter's device; tensors are copied."""
        load_state_dict_keeping_dtypes(self, state_dict, "shampoo")
        self._plan = None
