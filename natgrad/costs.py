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

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def _whole(v: Any) -> bool:
    """A whole number of at least 1, of any numeric type (4.0 and numpy ints too; not a bool)."""
    return not isinstance(v, bool) and float(v).is_integer() and v >= 1


def _sizes(*sizes: Any, block_size: Any = None) -> tuple[int, ...]:
    """``sizes`` and ``block_size`` (last; unless None) as ints; refused unless whole numbers >= 1."""
    for what, v in [("size", x) for x in sizes] + ([("block_size", block_size)] if block_size is not None else []):
        if not _whole(v):
            raise ValueError(f"sizes and block_size must be whole numbers of at least 1; got {what} {v!r}")
    return (*(int(x) for x in sizes), None if block_size is None else int(block_size))


def layer_costs(m: int, n: int, *, bias: bool = True, dtype: str = "float32") -> list[CurvatureCost]:
    """Costs of the exact block, K-FAC and the diagonal for one ``(m, n)`` layer."""
    m, n, _ = _sizes(m, n)
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
    dim, _ = _sizes(dim)
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


@dataclass(frozen=True)
class InversionTime:
    name: str
    size: int
    seconds: float
    measured: bool  # False: extrapolated from the fitted c·d³ law


MEASURE_LADDER = (128, 256, 512, 1024)  # sizes timed to fit the cubic law when the asked sizes are too large
FIT_FROM = 256  # smaller sizes are dominated by overheads, not by the d³ work


def fit_cubic(sizes: Sequence[int], seconds: Sequence[float]) -> float:
    """The constant ``c`` of ``t ≈ c·d³`` by least squares on measured points:
    minimising ``Σ (t_i − c d_i³)²`` gives ``c = Σ t_i d_i³ / Σ d_i⁶`` (the largest sizes, the
    ones closest to any extrapolation, weigh most)."""
    if len(sizes) != len(seconds) or not sizes:
        raise ValueError("need at least one (size, seconds) pair")
    cubes = [float(d) ** 3 for d in sizes]
    return sum(t * x for t, x in zip(seconds, cubes, strict=True)) / sum(x * x for x in cubes)


def inversion_times(dims: Mapping[str, int], measure: Callable[[int], float | None] | None = None, *,
                    max_dim: int = 2048, ladder: Sequence[int] = MEASURE_LADDER,
                    fit_from: int = FIT_FROM) -> tuple[list[InversionTime], list[InversionTime], float]:
    """Eigendecomposition seconds for each named size: measured where the size is at most
    ``max_dim``, else extrapolated from ``c·d³`` fitted (:func:`fit_cubic`) to what was measured:
    the asked sizes that fit and the ``ladder`` sizes up to ``max_dim`` (points below ``fit_from``
    are left out of the fit when at least two larger ones exist).

    ``measure(d)`` returns seconds (default: :func:`measure_eigh_seconds` on the CPU).
    Returns ``(rows, ladder_rows, c)``: one row per asked size in order, the ladder points
    measured for the fit, and the fitted constant."""
    measure = measure or (lambda d: measure_eigh_seconds(d, max_dim=max_dim))
    rows: list[InversionTime] = []
    points: dict[int, float] = {}
    for name, d in dims.items():
        if d <= max_dim:
            secs = points[d] if d in points else measure(d)
            if secs is not None:
                points[d] = secs
                rows.append(InversionTime(name, d, secs, True))
                continue
        rows.append(InversionTime(name, d, math.nan, False))
    ladder_rows = []
    if any(not r.measured for r in rows):
        for d in ladder:
            if d <= max_dim and d not in points:
                secs = measure(d)
                if secs is not None:
                    points[d] = secs
                    ladder_rows.append(InversionTime(f"{d} x {d} (for the fit)", d, secs, True))
    large = {d: t for d, t in points.items() if d >= fit_from}
    used = large if len(large) >= 2 else points
    c = fit_cubic(list(used), list(used.values())) if used else math.nan
    rows = [r if r.measured else InversionTime(r.name, r.size, c * float(r.size) ** 3, False) for r in rows]
    return rows, ladder_rows, c


def _three_digits(v: float) -> float:
    """``v`` rounded to the 3 significant digits it is written with."""
    return float(f"{v:.3g}")


def human_seconds(s: float) -> str:
    """A duration in the unit that reads best: "3.2 ms", "12 s", "1 minute", "4.1 hours", "3.5e+04 years".
    The unit is chosen after rounding to 3 digits, so 59.9996 s is "1 minute", never "60 s"."""
    if not math.isfinite(s):
        return "n/a"
    if s < 0:
        return "-" + human_seconds(-s)
    for unit, size in (("year", 365.25 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        v = _three_digits(s / size)
        if v >= 1:
            return f"{v:.3g} {unit}{'s' * (v != 1)}" if v < 1e4 else f"{s / size:.2e} {unit}s"
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if _three_digits(s / size) >= 1 or (unit == "µs" and s == 0):
            return f"{s / size:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def human_bytes(n: float) -> str:
    """SI units (GB = 1e9 bytes), as memory is usually quoted for accelerators; the unit is chosen
    after rounding to 3 digits (999.6 bytes is "1 kB", never "1e+03 B")."""
    if not math.isfinite(n):
        return "n/a"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(_three_digits(n)) < 1000 or unit == "EB":
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
    m, n, block_size = _sizes(m, n, block_size=block_size)
    if not _whole(world_size):
        raise ValueError(f"world_size must be a whole number of at least 1, got {world_size!r}")
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
    m, n, block_size = _sizes(m, n, block_size=block_size)
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
    m, n, block_size = _sizes(m, n, block_size=block_size)
    return len(_split(m, block_size)) * len(_split(n, block_size))


# Cholesky factorisation: d^3/3 (K-FAC keeps the factor and applies it by two triangular solves,
# 2 d^2 flops per right-hand side, as many as a product with an explicit inverse)
CHOLESKY_FLOPS = 1 / 3


def _side_costs(method: str, d: int, rank: int, other: int) -> tuple[float, float, float]:
    """(invert FLOPs per refresh, apply FLOPs per step, elements kept) of one factor of dimension
    ``d`` applied to a gradient with ``other`` rows or columns: an eigendecomposition, a Cholesky
    factor, or a low-rank factor of ``rank`` rows applied by the Woodbury identity (its Gram
    matrix, that matrix's Cholesky factor, then 4 r d + 2 r^2 per right-hand side)."""
    if method == "woodbury":
        return (2.0 * rank * rank * d + CHOLESKY_FLOPS * float(rank) ** 3,
                other * (4.0 * rank * d + 2.0 * rank * rank), 2.0 * rank * d + rank * rank)
    return (CHOLESKY_FLOPS if method == "cholesky" else EIGH_FLOPS) * float(d) ** 3, 2.0 * other * d * d, 2.0 * d * d


KFAC_SCHEDULE = ("factor_update_steps", "inverse_update_steps", "wide_factor_dim", "wide_update_steps", "factor_decay")


def kfac_schedule() -> dict[str, Any]:
    """K-FAC's default refresh schedule (:data:`KFAC_SCHEDULE`, read from :class:`natgrad.optim.KFAC`'s signature)."""
    import inspect

    from natgrad.optim.kfac.optimizer import KFAC

    params = inspect.signature(KFAC.__init__).parameters
    return {k: params[k].default for k in KFAC_SCHEDULE}


@dataclass(frozen=True)
class KFACLayerCost:
    """What one K-FAC layer of a model costs, per factor and per step.

    ``rows``: rows of the factor statistics per batch (examples x output positions);
    ``methods``: how A and G are inverted (``"eigh"``; above ``wide_factor_dim``, ``"woodbury"``
    when the batches a low-rank factor keeps have at most half its width in rows, else
    ``"cholesky"``); FLOPs per refresh and amortised per step over the schedules.
    """

    name: str
    kind: str
    a_dim: int
    g_dim: int
    rows: int
    methods: tuple[str, str]
    bytes: int  # A, G and their inverses (eigenvectors, Cholesky factor, or rows and Gram factor)
    statistics_flops: tuple[float, float]  # one refresh of A, of G
    invert_flops: tuple[float, float]
    apply_flops: float  # per step: (G + .)^-1 grad (A + .)^-1
    statistics_per_step: float  # both factors' statistics, amortised over their refresh intervals
    inverses_per_step: float  # both inverses, amortised likewise

    @property
    def per_step_flops(self) -> float:
        return self.statistics_per_step + self.inverses_per_step + self.apply_flops


def kfac_layer_costs(model: torch.nn.Module, example_input: torch.Tensor, *, dtype: str = "float32",
                     **schedule) -> list[KFACLayerCost]:
    """Per-layer costs of :class:`natgrad.optim.KFAC` on ``model`` for batches like ``example_input``.

    ``schedule`` may set ``factor_update_steps``, ``inverse_update_steps``, ``wide_factor_dim``
    and ``wide_update_steps``; the rest come from K-FAC's defaults. A factor of dimension ``d``
    built from ``r`` rows costs ``2 r d^2`` FLOPs (``X^T X``), its eigendecomposition
    ``EIGH_FLOPS d^3`` and a wide factor's Cholesky factorisation ``CHOLESKY_FLOPS d^3``;
    preconditioning an ``(m, n)`` gradient costs ``2 (m^2 n + m n^2)``
    (Martens & Grosse 2015, s. 4); a wide factor kept low-rank costs what :func:`_side_costs`
    says (:mod:`natgrad.optim.kfac.linalg`).
    """
    from natgrad.optim.kfac.layers import find_layers
    from natgrad.optim.kfac.linalg import steady_batches

    s = kfac_schedule() | {k: v for k, v in schedule.items() if k in KFAC_SCHEDULE}
    kept = steady_batches(s["factor_decay"] ** s["wide_update_steps"])
    layers, _ = find_layers(model)
    rows: dict[str, int] = {}

    def count(name: str):
        def hook(module, inputs, o: torch.Tensor) -> None:  # examples x positions: numel / channels
            rows[name] = rows.get(name, 0) + o.numel() // (o.shape[1] if o.ndim == 4 else o.shape[-1])

        return hook

    hooks = [ly.module.register_forward_hook(count(ly.name)) for ly in layers]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    b = DTYPE_BYTES[dtype]
    out = []
    for ly in layers:
        dims, r = (ly.in_dim, ly.out_dim), rows.get(ly.name, 0)
        wide = [d > s["wide_factor_dim"] for d in dims]
        low_rank = [w and r * kept <= d // 2 for d, w in zip(dims, wide, strict=True)]
        methods = tuple("woodbury" if lr else "cholesky" if w else "eigh" for w, lr in zip(wide, low_rank,
                                                                                          strict=True))
        stats = tuple(float(r) * d if lr else 2.0 * r * float(d) ** 2 for d, lr in zip(dims, low_rank, strict=True))
        m, n = ly.out_dim, ly.in_dim
        sides = [_side_costs(k, d, r * kept, other) for k, d, other in zip(methods, dims, (m, n), strict=True)]
        invert = (sides[0][0], sides[1][0])
        stat_every = [s["wide_update_steps"] if w else s["factor_update_steps"] for w in wide]
        inv_every = [s["wide_update_steps"] if w else s["inverse_update_steps"] for w in wide]
        out.append(KFACLayerCost(ly.name, type(ly.module).__name__, n, m, r, methods,
                                 int(sum(x for _, _, x in sides)) * b, stats, invert, sides[0][1] + sides[1][1],
                                 sum(x / k for x, k in zip(stats, stat_every, strict=True)),
                                 sum(x / k for x, k in zip(invert, inv_every, strict=True))))
    return out


def kfac_task_costs(task: str, seed: int = 0) -> list[KFACLayerCost]:
    """:func:`kfac_layer_costs` of a task of :data:`natgrad.experiments.TASKS` at its batch size
    (the CNN's mini-batches of :data:`natgrad.tasks.digits.CNN_BATCH`, else the full batch)."""
    from natgrad.experiments import make_task
    from natgrad.tasks.digits import CNN_BATCH

    t = make_task(task, seed, torch.device("cpu"), torch.float32)
    x, _ = t.batch(CNN_BATCH if task == "digits-cnn" else None, torch.Generator().manual_seed(seed))
    return kfac_layer_costs(t.model, x)
