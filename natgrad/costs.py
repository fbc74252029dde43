"""Memory and FLOP counts of curvature representations, computed not typed.

For a dense layer ``W`` of shape ``(m, n)`` (``m`` outputs, ``n`` inputs;
with a bias the input side is ``n + 1``):

* exact Fisher block: ``(m n)^2`` entries, ``O((m n)^3)`` to invert;
* K-FAC: ``A`` is ``n x n`` and ``G`` is ``m x m``: ``m^2 + n^2`` entries,
  ``O(m^3 + n^3)`` to invert (eigendecompose), ``O(m^2 n + m n^2)`` to apply;
* diagonal (Adam-like): ``m n`` entries, ``O(m n)`` to apply.

Martens & Grosse 2015 (arXiv 1503.05671), section 4. Shampoo keeps a
statistic and its inverse root per factor, so twice the factor memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from natgrad.optim.shampoo.blocks import assign_blocks, plan_blocks

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
# Dense symmetric eigendecomposition is about 9 n^3 flops (Golub & Van Loan); we
# report the leading n^3 order with this constant so that numbers are comparable.
EIGH_FLOPS = 9.0


@dataclass(frozen=True)
class CurvatureCost:
    name: str
    entries: int  # stored numbers
    bytes: int
    invert_flops: float  # to (re)compute the inverse / eigendecomposition
    apply_flops: float  # to precondition one gradient


def layer_costs(m: int, n: int, *, bias: bool = True, dtype: str = "float32") -> list[CurvatureCost]:
    """Costs of the exact block, K-FAC and the diagonal for one ``(m, n)`` layer."""
    if m <= 0 or n <= 0:
        raise ValueError("layer sizes must be positive")
    b = DTYPE_BYTES[dtype]
    n_in = n + 1 if bias else n
    p = m * n_in
    exact = CurvatureCost("exact Fisher block", p * p, p * p * b, EIGH_FLOPS * float(p) ** 3, 2.0 * float(p) ** 2)
    kfac_entries = m * m + n_in * n_in
    kfac = CurvatureCost(
        "K-FAC (A and G)",
        kfac_entries,
        kfac_entries * b,
        EIGH_FLOPS * (float(m) ** 3 + float(n_in) ** 3),
        2.0 * (float(m) ** 2 * n_in + m * float(n_in) ** 2),
    )
    diag = CurvatureCost("diagonal", p, p * b, 0.0, 2.0 * p)
    return [exact, kfac, diag]


def factor_bytes(dim: int, dtype: str = "float32") -> int:
    """Bytes of one dense ``dim x dim`` factor (32000 -> 32000^2 * 4 = 4.096e9 bytes in fp32)."""
    return dim * dim * DTYPE_BYTES[dtype]


def measure_eigh_seconds(dim: int, *, device: torch.device | str = "cpu", dtype=torch.float32,
                         repeats: int = 3, max_dim: int = 4096) -> float | None:
    """Median seconds to eigendecompose a random SPD ``dim x dim`` matrix on ``device``.

    Returns None when ``dim > max_dim`` (too slow or too large to try here).
    """
    if dim > max_dim:
        return None
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(dim, 2 * dim, generator=g, dtype=dtype)
    spd = (x @ x.T / (2 * dim) + 1e-3 * torch.eye(dim, dtype=dtype)).to(device)
    run_device = "cpu" if device.type == "mps" else device  # eigh is not implemented on MPS
    spd = spd.to(run_device)
    times = []
    for _ in range(repeats):
        if spd.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.linalg.eigh(spd)
        if spd.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def human_bytes(n: float) -> str:
    """SI units (GB = 1e9 bytes), as memory is usually quoted for accelerators."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} EB"


@dataclass(frozen=True)
class ShampooMemory:
    shape: tuple[int, int]
    block_size: int | None
    blocks: int
    factor_bytes: int  # statistics L and R of every block
    root_bytes: int  # their inverse roots (same size)
    per_rank: list[int]  # bytes held by each of world_size ranks (DistributedShampoo's assignment)

    @property
    def total_bytes(self) -> int:
        return self.factor_bytes + self.root_bytes


def _split(dim: int, block: int | None) -> list[int]:
    if block is None or dim <= block:
        return [dim]
    return [block] * (dim // block) + ([dim % block] if dim % block else [])


def shampoo_memory(m: int, n: int, *, dtype: str = "float32", block_size: int | None = None,
                   world_size: int = 1) -> ShampooMemory:
    r"""Bytes Shampoo keeps for one ``(m, n)`` matrix parameter.

    Each block ``(bm, bn)`` has statistics ``L`` (bm x bm) and ``R`` (bn x bn)
    plus their inverse roots, so ``2 (bm^2 + bn^2)`` numbers. With
    ``block_size`` every dimension is cut into pieces of at most that size
    (Shi et al. 2023, ``max_preconditioner_dim``). ``per_rank`` is what each of
    ``world_size`` ranks holds when the blocks are handed out exactly as
    :class:`natgrad.optim.DistributedShampoo` hands them out
    (:func:`natgrad.optim.shampoo.blocks.plan_blocks` and
    :func:`~natgrad.optim.shampoo.blocks.assign_blocks`: by root cost
    :math:`\sum_i d_i^3`, largest first, each to the least-loaded rank; Anil et
    al. 2020; Shi et al. 2023).
    """
    if m <= 0 or n <= 0 or world_size <= 0:
        raise ValueError("sizes and world_size must be positive")
    if block_size is not None and block_size <= 0:
        raise ValueError("block_size must be positive")
    blocks = plan_blocks((m, n), block_size or max(m, n), 0, "W", getattr(torch, dtype))
    owner = assign_blocks(blocks, world_size)
    per_rank = [0] * world_size
    for blk in blocks:
        per_rank[owner[blk.key]] += blk.preconditioner_bytes
    stats = sum(blk.statistics_bytes for blk in blocks)
    return ShampooMemory((m, n), block_size, len(blocks), stats, stats, per_rank)


def shampoo_factor_costs(m: int, n: int, *, dtype: str = "float32", block_size: int | None = None
                         ) -> list[CurvatureCost]:
    """Shampoo's ``L``, its inverse root, ``R`` and its inverse root for one ``(m, n)``
    matrix, each summed over the blocks of ``block_size`` (None: one block).

    Every block ``(bm, bn)`` has ``L`` of ``bm^2`` and ``R`` of ``bn^2`` entries, so
    over the grid ``L`` totals ``(#column blocks) * sum(bm^2)`` and ``R``
    ``(#row blocks) * sum(bn^2)``; together they are :func:`shampoo_memory`'s
    ``factor_bytes``. Unblocked, ``L`` of a 32000-row matrix in float32 is
    ``32000^2 * 4 = 4.096e9`` bytes. Inverting means an
    eigendecomposition (``EIGH_FLOPS d^3``, on statistics only); applying a
    root to a block's ``(bm, bn)`` matrix costs ``2 bm^2 bn`` (``L``) or
    ``2 bm bn^2`` (``R``) FLOPs.
    """
    if m <= 0 or n <= 0 or (block_size is not None and block_size <= 0):
        raise ValueError("sizes and block_size must be positive")
    b = DTYPE_BYTES[dtype]
    rows, cols = _split(m, block_size), _split(n, block_size)
    left_sq, right_sq = sum(d * d for d in rows), sum(d * d for d in cols)
    left, right = len(cols) * left_sq, len(rows) * right_sq
    left_invert = EIGH_FLOPS * len(cols) * sum(float(d) ** 3 for d in rows)
    right_invert = EIGH_FLOPS * len(rows) * sum(float(d) ** 3 for d in cols)
    left_apply, right_apply = 2.0 * n * left_sq, 2.0 * m * right_sq  # sums over blocks of 2 bm^2 bn, 2 bm bn^2
    return [
        CurvatureCost("L (statistic)", left, left * b, left_invert, 0.0),
        CurvatureCost("inverse root of L", left, left * b, 0.0, left_apply),
        CurvatureCost("R (statistic)", right, right * b, right_invert, 0.0),
        CurvatureCost("inverse root of R", right, right * b, 0.0, right_apply),
    ]


def shampoo_blocks(m: int, n: int, block_size: int | None = None) -> int:
    """How many blocks an ``(m, n)`` matrix is cut into (``ceil(m/b) * ceil(n/b)``)."""
    return len(_split(m, block_size)) * len(_split(n, block_size))
