r"""Distributed Shampoo: the same update as :class:`natgrad.optim.Shampoo`, with
the preconditioner blocks sharded over the ranks of a data-parallel job.

Every rank holds the whole model and sees the same (all-reduced) gradient. The
blocks of all parameters (see :mod:`natgrad.optim.shampoo.blocks`) are assigned
to ranks by estimated root cost :math:`\sum_i d_i^3`, largest first, each to
the least-loaded rank; the assignment is deterministic, so every rank computes
the same one without talking. Per step, rank ``r``

1. updates the statistics of its own blocks only and, when due, their roots;
2. preconditions its own blocks' first moments,
   :math:`S_b = L_b^{-1/p} \hat M_b R_b^{-1/p}`;
3. all-gathers the flattened directions (one padded buffer per rank), so
   every rank holds every :math:`S_b`;
4. grafts and applies the update exactly as the single-process optimizer.

Memory for statistics and roots, and the time in eigendecompositions, are thus
divided by about the world size, at the price of one all-gather of the model's
size per step (Anil et al. 2020, arXiv 2002.09018; Shi et al. 2023,
arXiv 2309.06497, who report at most ~10% overhead per step over diagonal
methods). With one rank it is :class:`Shampoo` (same numbers, bit for bit).

The graft's per-parameter state (first/second moments) is replicated: it is
the size of the model, like Adam's.

Launch with :func:`natgrad.distributed.launch` or ``torchrun`` (commands in
:mod:`natgrad.distributed`).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from natgrad.optim.shampoo import blocks as sb
from natgrad.optim.shampoo.optimizer import Shampoo


class DistributedShampoo(Shampoo):
    r"""Shampoo with its preconditioner blocks sharded over ranks (module docstring).

    Args:
        params, lr, beta1, **kwargs: as :class:`natgrad.optim.Shampoo`.
        process_group: the group to shard over (default: the world). Without an
            initialised process group it runs as a single rank.
        average_gradients: all-reduce (mean) the gradients at the start of
            :meth:`step`, in one flattened buffer; leave False when DDP or the
            caller already did.
        monitored_barrier_timeout_s: with gloo, call ``dist.monitored_barrier``
            before each exchange, so a rank that never arrives is named in the
            error raised on rank 0 (debugging aid; one extra round trip per step).

    Every rank must call :meth:`step` with the same parameters having
    gradients, and :meth:`add_param_group` with the same groups. Checkpoints
    are per rank: each rank's ``state_dict`` holds its own blocks and the
    owner of every block, which :meth:`load_state_dict` restores (same world
    size only).
    """

    def __init__(self, params, lr: float = 1e-3, beta1: float = 0.9, *, process_group=None,
                 average_gradients: bool = False, monitored_barrier_timeout_s: float | None = None, **kwargs):
        self.process_group = process_group
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank(process_group)
            self.world_size = dist.get_world_size(process_group)
        else:
            self.rank, self.world_size = 0, 1
        self.average_gradients = average_gradients
        self.monitored_barrier_timeout_s = monitored_barrier_timeout_s
        self.comm_seconds = 0.0
        self._owner: dict | None = None  # None while the constructor adds the initial groups
        super().__init__(params, lr, beta1, **kwargs)
        self._owner = sb.assign_blocks(self._all_blocks(), self.world_size)

    # ------------------------------------------------------------ sharding
    def _all_blocks(self) -> list[sb.Block]:
        return [b for bl in self.blocks().values() for b in bl]

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as ``torch.optim.Optimizer`` does. Its blocks are given owners
        on top of the existing loads (:func:`~natgrad.optim.shampoo.blocks.assign_blocks`);
        blocks already placed keep their rank and their statistics. Every rank must add
        the same groups in the same order."""
        super().add_param_group(param_group)
        if self._owner is not None:
            self._owner = sb.assign_blocks(self._all_blocks(), self.world_size, owners=self._owner)

    def assignment(self) -> dict[tuple[int, int], int]:
        """Owner rank of every block key (greedy by cost, identical on every rank): the
        constructor's groups placed together, each later group on top of them."""
        return self._owner

    def _owns(self, key: tuple[int, int]) -> bool:
        return self.assignment()[key] == self.rank

    def _prepare_grads(self, params: list[torch.Tensor]) -> None:
        if not self.average_gradients or self.world_size == 1 or not params:
            return
        grads = [p.grad for p in params]
        t0 = time.perf_counter()
        dtype = grads[0].dtype
        for g in grads:
            dtype = torch.promote_types(dtype, g.dtype)
        flat = torch.cat([g.reshape(-1).to(dtype) for g in grads])  # (total,): one all-reduce for all
        dist.all_reduce(flat, group=self.process_group)
        flat.div_(self.world_size)
        self.comm_seconds += time.perf_counter() - t0
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _exchange(self, directions: dict, active: list[sb.Block]) -> dict:
        if self.world_size == 1 or not active:
            return directions
        owner = self.assignment()
        params = {b.key[0]: p for p, bl in self.blocks().items() for b in bl}
        by_key = {b.key: b for b in active}
        keys_of = [sorted(k for k in by_key if owner[k] == r) for r in range(self.world_size)]
        n = max(sum(by_key[k].numel for k in keys) for keys in keys_of)
        if n == 0:
            return directions
        sample = params[active[0].key[0]]
        dtype = sample.dtype
        for b in active:
            dtype = torch.promote_types(dtype, params[b.key[0]].dtype)
        buf = torch.zeros(n, dtype=dtype, device=sample.device)
        offset = 0
        for k in keys_of[self.rank]:  # (n,): this rank's directions, flattened in key order, zero padded
            buf[offset:offset + by_key[k].numel] = directions[k].reshape(-1)
            offset += by_key[k].numel
        gathered = [torch.empty_like(buf) for _ in range(self.world_size)]
        t0 = time.perf_counter()
        if self.monitored_barrier_timeout_s is not None and dist.get_backend(self.process_group) == "gloo":
            from datetime import timedelta

            dist.monitored_barrier(self.process_group, timeout=timedelta(seconds=self.monitored_barrier_timeout_s),
                                   wait_all_ranks=True)
        dist.all_gather(gathered, buf, group=self.process_group)
        self.comm_seconds += time.perf_counter() - t0
        out = dict(directions)
        for r in range(self.world_size):
            if r == self.rank:
                continue
            offset = 0
            for k in keys_of[r]:
                b = by_key[k]
                pd = params[k[0]].dtype
                x = gathered[r][offset:offset + b.numel].view(b.shape)
                out[b.key] = x if x.dtype == pd else x.to(pd)
                offset += b.numel
        return out

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["shampoo"]["owners"] = dict(world_size=self.world_size,
                                       blocks=[[*k, r] for k, r in sorted(self._owner.items())])
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load this rank's :meth:`state_dict`, with the block owners it was saved with."""
        extra = dict(state_dict.get("shampoo", {}))
        saved = extra.pop("owners", None)
        if saved is not None and saved["world_size"] != self.world_size:
            raise ValueError(f"this checkpoint was saved on {saved['world_size']} ranks; this run has "
                             f"{self.world_size} (each rank's checkpoint holds only its own blocks)")
        super().load_state_dict(state_dict | {"shampoo": extra})
        if saved is not None:
            self._owner = {(pi, bi): r for pi, bi, r in saved["blocks"]}

    # -------------------------------------------------------------- report
    def rank_report(self) -> dict:
        """What this rank holds and where its time went.

        Returns ``rank``, ``world_size``, ``blocks`` (name, key, shape, cost of
        each owned block), ``statistics_bytes``, ``root_bytes``,
        ``preconditioner_bytes`` (their sum), ``root_seconds``,
        ``comm_seconds`` (gradient all-reduce + direction all-gather, host
        wall-clock), ``root_failures``.
        """
        owned = [b for bl in self.blocks().values() for b in bl if self._owns(b.key)]
        return dict(
            rank=self.rank,
            world_size=self.world_size,
            blocks=[dict(name=b.name, key=b.key, shape=b.shape, cost=b.cost) for b in owned],
            statistics_bytes=sum(b.statistics_bytes for b in owned),
            root_bytes=sum(b.root_bytes for b in owned),
            preconditioner_bytes=sum(b.preconditioner_bytes for b in owned),
            root_seconds=self.root_seconds,
            comm_seconds=self.comm_seconds,
            root_failures=self.root_failures,
        )
