r"""Blocks of a Shampoo preconditioner: how a parameter is cut up, and the
per-block statistics, inverse roots and preconditioning.

A parameter of shape ``(d_1, ..., d_k)``, ``k >= 2``, is first viewed in one of
two layouts (:data:`TENSOR_LAYOUTS`, Shampoo's ``tensors`` option), which only
matters for ``k >= 3``, e.g. a convolution kernel ``(out, in, kh, kw)``:

* ``"modes"``: as it is, one factor per axis (Gupta, Koren & Singer 2018,
  s. 4; Shi et al. 2023, arXiv 2309.06497): for a ``32 x 16 x 3 x 3`` kernel
  factors of 32, 16, 3 and 3, cheap, but the input channels and the kernel taps
  are decorrelated separately;
* ``"matrix"``: reshaped to ``(d_1, d_2 d_3 ... d_k)``, the matrix the layer
  applies to each unfolded input patch (the view K-FAC takes of a convolution,
  Grosse & Martens 2016, arXiv 1602.01407; reshaping tensors before
  preconditioning: Anil et al. 2020, arXiv 2002.09018): factors of 32 and 144
  that also see how channels and taps co-vary. Shampoo on this layout is
  Shampoo on the reshaped matrix parameter, number for number.

Every dimension of the view is then cut into pieces of at most
``max_preconditioner_dim`` (Shi et al. 2023, ``max_preconditioner_dim``); each
piece of the Cartesian product is a block with its own Kronecker factors

.. math::

    S^{(i)} \mathrel{+}= G_{(i)} G_{(i)}^\top \in \mathbb{R}^{d_i \times d_i},
    \qquad i = 1, \dots, k,

where :math:`G_{(i)}` is the mode-``i`` unfolding of the block gradient (the
contraction of :math:`G \otimes G` over every other index). For a matrix this
is :math:`L = \sum G G^\top`, :math:`R = \sum G^\top G` (Gupta, Koren & Singer
2018, arXiv 1802.09568). A 1-D (or 0-D) parameter is one *diagonal* block with
statistic :math:`D \mathrel{+}= g \odot g` (AdaGrad/Adam-style).

:func:`assign_blocks` spreads blocks over ranks by estimated root cost
(:math:`\sum_i d_i^3`), largest first, each to the least-loaded rank
(Anil et al. 2020, arXiv 2002.09018; Shi et al. 2023); blocks added later (a new
parameter group) are placed the same way on top of the existing loads, and the
existing blocks stay where their statistics are.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from natgrad.optim.linalg import effective_epsilon, matrix_inverse_root


@dataclass(frozen=True)
class Block:
    """One preconditioner block of one parameter.

    ``key = (param_index, block_index)`` is unique within an optimizer and the
    same on every rank (parameters are numbered in ``param_groups`` order).
    """

    key: tuple[int, int]
    name: str
    slices: tuple[slice, ...]  # into the parameter viewed with ndim >= 1
    shape: tuple[int, ...]
    diagonal: bool
    dtype: torch.dtype  # dtype of the statistics and roots
    view: tuple[int, ...] | None = None  # the parameter's shape as blocked (see view_shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def cost(self) -> float:
        """Estimated root cost: sum of ``d^3`` over factor sizes (``d`` for a diagonal block)."""
        return float(self.numel) if self.diagonal else float(sum(d**3 for d in self.shape))

    @property
    def statistics_bytes(self) -> int:
        """Bytes of the statistics: ``numel`` (diagonal) or ``sum(d^2)`` entries."""
        item = torch.empty((), dtype=self.dtype).element_size()
        return item * (self.numel if self.diagonal else sum(d * d for d in self.shape))

    @property
    def root_bytes(self) -> int:
        """Bytes of the stored inverse roots (none for a diagonal block)."""
        return 0 if self.diagonal else self.statistics_bytes

    @property
    def preconditioner_bytes(self) -> int:
        """Statistics plus roots."""
        return self.statistics_bytes + self.root_bytes


def _chunks(d: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, d)) for s in range(0, d, size)]


TENSOR_LAYOUTS = ("modes", "matrix")


def view_shape(shape: tuple[int, ...], tensors: str = "modes") -> tuple[int, ...]:
    """The shape a parameter is blocked in: 0-D as ``(1,)``; with ``tensors="matrix"``
    an order ``k >= 3`` tensor as ``(d_1, d_2 ... d_k)``; otherwise unchanged."""
    if tensors not in TENSOR_LAYOUTS:
        raise ValueError(f"tensors must be one of {TENSOR_LAYOUTS}, got {tensors!r}")
    shape = tuple(shape) or (1,)
    return (shape[0], math.prod(shape[1:])) if tensors == "matrix" and len(shape) > 2 else shape


def plan_blocks(
    shape: tuple[int, ...], max_dim: int, param_index: int, name: str, dtype: torch.dtype, tensors: str = "modes"
) -> list[Block]:
    """Cut a parameter of ``shape``, viewed as :func:`view_shape`, into blocks (module docstring)."""
    shape = view_shape(shape, tensors)
    if len(shape) == 1:
        return [Block((param_index, 0), name, (slice(0, shape[0]),), shape, True, dtype, shape)]
    blocks = []
    for b, sl in enumerate(itertools.product(*(_chunks(d, max_dim) for d in shape))):
        bshape = tuple(s.stop - s.start for s in sl)
        label = name if bshape == shape else f"{name}[{', '.join(f'{s.start}:{s.stop}' for s in sl)}]"
        blocks.append(Block((param_index, b), label, sl, bshape, False, dtype, shape))
    return blocks


def assign_blocks(blocks: list[Block], world_size: int,
                  owners: dict[tuple[int, int], int] | None = None) -> dict[tuple[int, int], int]:
    """Greedy, deterministic owner rank per block key: sort by cost (descending,
    ties by key), give each block to the least-loaded rank (ties: lowest rank).

    ``owners``: blocks already placed (e.g. before ``add_param_group``); they keep
    their rank and count towards its load, and only the other blocks are placed.
    """
    owner = dict(owners or {})
    load = [0.0] * world_size
    for blk in blocks:
        if blk.key in owner:
            load[owner[blk.key]] += blk.cost
    for blk in sorted((b for b in blocks if b.key not in owner), key=lambda b: (-b.cost, b.key)):
        r = min(range(world_size), key=lambda i: (load[i], i))
        owner[blk.key] = r
        load[r] += blk.cost
    return owner


def init_block_state(blk: Block, device: torch.device) -> dict:
    """Zero statistics and identity roots (the fallback if the first root fails)."""
    if blk.diagonal:
        return {"diag": torch.zeros(blk.shape, dtype=blk.dtype, device=device)}
    return {
        "factors": [torch.zeros(d, d, dtype=blk.dtype, device=device) for d in blk.shape],
        "roots": [torch.eye(d, dtype=blk.dtype, device=device) for d in blk.shape],
    }


def _cast(x: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    x = x if x.dtype == dtype else x.to(dtype)
    return x if x.shape == shape else x.reshape(shape)


def update_statistics(blk: Block, bstate: dict, g: torch.Tensor, beta2: float | None) -> None:
    """``S_i <- S_i + G_(i) G_(i)^T`` (``beta2`` None) or ``S_i <- beta2 S_i + (1 - beta2) G_(i) G_(i)^T``
    for a matrix or tensor block (diagonal blocks: :func:`diagonal_blocks`)."""
    g = _cast(g, blk.dtype, blk.shape)
    keep, new = (1.0, 1.0) if beta2 is None else (beta2, 1.0 - beta2)
    k = len(blk.shape)
    for i, S in enumerate(bstate["factors"]):
        gi = g if (k == 2 and i == 0) else (g.mT if k == 2 else g.movedim(i, 0).reshape(blk.shape[i], -1))
        S.addmm_(gi, gi.mT, beta=keep, alpha=new)  # (d_i, d_i)


def diagonal_blocks(items: list, beta2: float | None, eps: float, epsilon_mode: str) -> dict:
    r"""All diagonal blocks at once: :math:`D \mathrel{+}= g \odot g` (or the EMA), then
    for those with a first moment ``m`` the direction
    :math:`m \odot (D/(1-\beta_2^t) + \epsilon')^{-1/2}` (:math:`\epsilon'` as in
    :func:`natgrad.optim.linalg.effective_epsilon`).

    ``items``: ``(block, block_state, g, m or None, bias_correction)`` tuples.
    Returns ``{block.key: direction}`` for the items with ``m``.
    """
    Ds = [st["diag"] for _, st, *_ in items]
    gs = [_cast(g, blk.dtype, blk.shape) for blk, _, g, *_ in items]
    if beta2 is not None:
        torch._foreach_mul_(Ds, beta2)
    torch._foreach_addcmul_(Ds, gs, gs, value=1.0 if beta2 is None else 1.0 - beta2)
    out = {}
    kinds: dict = {}  # blocks with a first moment and something in them, by (dtype, device)
    for it in items:
        blk, st, _, m, _ = it
        if m is None:
            continue
        if blk.numel == 0:
            out[blk.key] = torch.empty(blk.shape, dtype=m.dtype, device=m.device)
        else:
            kinds.setdefault((blk.dtype, st["diag"].device), []).append(it)
    for live in kinds.values():
        out.update(_diagonal_directions(live, eps, epsilon_mode))
    return out


def _diagonal_directions(live: list, eps: float, epsilon_mode: str) -> dict:
    """:func:`diagonal_blocks`' directions for non-empty blocks of one dtype and device,
    computed on their (1-D) statistics laid end to end: a handful of operations on
    one vector instead of a dozen on many small ones, the same arithmetic per entry."""
    lengths = [blk.shape[0] for blk, *_ in live]
    x = torch.cat([st["diag"] for _, st, *_ in live])  # sums of squares: already >= 0
    counts = torch.tensor(lengths, device=x.device)
    bcs = [it[4] for it in live]
    if any(b != 1.0 for b in bcs):
        x = x / torch.tensor(bcs, dtype=x.dtype, device=x.device).repeat_interleave(counts, output_size=x.numel())
    if epsilon_mode == "absolute":
        x = x + eps
    else:  # one regulariser per block, from its largest entry
        lam_max = torch.stack(torch._foreach_max(list(x.split(lengths)))).unsqueeze(-1)  # (blocks, 1)
        x = x + effective_epsilon(lam_max, eps, epsilon_mode).flatten().repeat_interleave(counts, output_size=x.numel())
    x = x.rsqrt_().mul_(torch.cat([m for *_, m, _ in live]).to(x.dtype))
    return {blk.key: xi if xi.dtype == m.dtype else xi.to(m.dtype)
            for (blk, _, _, m, _), xi in zip(live, x.split(lengths), strict=True)}


def compute_roots(
    blk: Block, bstate: dict, p: float, eps: float, epsilon_mode: str, bias_correction: float
) -> list[str | None]:
    """Recompute every factor's inverse root in place; return one event per factor."""
    events = []
    for S, R in zip(bstate["factors"], bstate["roots"], strict=True):
        S_hat = S if bias_correction == 1.0 else S / bias_correction
        root, event = matrix_inverse_root(S_hat, p, eps, previous=R, epsilon_mode=epsilon_mode)
        if root is not R:
            R.copy_(root)
        events.append(event)
    return events


def precondition(blk: Block, bstate: dict, m: torch.Tensor) -> torch.Tensor:
    r"""The block's Shampoo direction for the (filtered) gradient block ``m``:
    :math:`R_1 M R_2` for a matrix, ``M`` multiplied by :math:`R_i` along every
    mode ``i`` for an order-``k`` block. Returned in ``m``'s dtype, shape ``blk.shape``.
    """
    x = _cast(m, blk.dtype, blk.shape)
    roots = bstate["roots"]
    if len(roots) == 2:
        x = roots[0] @ x @ roots[1]  # (d1, d2)
    else:
        for R in roots:  # contracting mode 0 each time cycles the modes back to their order
            x = torch.tensordot(x, R, dims=([0], [0]))
    return x if x.dtype == m.dtype else x.to(m.dtype)


def block_state_bytes(bstate: dict) -> int:
    """Bytes actually held by one block's state (for checking ``preconditioner_bytes``)."""
    tensors = [bstate["diag"]] if "diag" in bstate else [*bstate["factors"], *bstate["roots"]]
    return sum(t.numel() * t.element_size() for t in tensors)


def assemble(p: torch.Tensor, blocks: list[Block], directions: dict) -> torch.Tensor:
    """A parameter's direction from its blocks' directions (``{block.key: tensor}``)."""
    if len(blocks) == 1:
        return directions[blocks[0].key].reshape(p.shape)
    s = p.new_empty(blocks[0].view)
    for blk in blocks:
        s[blk.slices] = directions[blk.key]
    return s.reshape(p.shape)


def copy_to(value, device: torch.device):
    """A deep copy of a (nested) optimizer state with every tensor on ``device``, dtypes kept."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: copy_to(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(copy_to(v, device) for v in value)
    return value
