"""natgrad.sharding: real gloo ranks (spawned) against single-process Shampoo,
memory adding up to the closed-form total, and a failing rank named."""

from __future__ import annotations

import pytest

from natgrad import costs
from natgrad.distributed import DistributedRunError, live_ranks
from natgrad.sharding import DATA_SIZE, MODELS, ShardingConfig, run_sharded


def expected_bytes(cfg: ShardingConfig) -> int:
    """Closed form: every weight (m, n) blocked at b has 2 (sum bm^2 + sum bn^2) fp32
    numbers (statistics and roots, costs.shampoo_memory); a bias is one diagonal block
    whose statistic has as many numbers as the bias."""
    widths = MODELS[cfg.model][1]
    total = 0
    for d_in, d_out in zip(widths[:-1], widths[1:], strict=True):
        total += costs.shampoo_memory(d_out, d_in, block_size=cfg.max_preconditioner_dim).total_bytes
        total += 4 * d_out
    return total


def test_one_rank_is_single_process_shampoo_bit_for_bit():
    cfg = ShardingConfig(world_size=1, steps=12)
    seen = []
    res = run_sharded(cfg, progress=lambda frac, text: seen.append(frac))
    assert res.max_abs_diff == 0.0 and res.loss == res.reference_loss
    assert res.per_rank_bytes == [res.reference_bytes] == [expected_bytes(cfg)]
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert res.reports[0]["comm_seconds"] == 0.0 and res.reports[0]["steps"] == 12
    assert live_ranks() == []


def test_two_ranks_split_the_blocks_and_match_the_single_process_run():
    """Equal shards of DATA_SIZE digits: the all-reduced mean gradient is the full-batch
    gradient up to summation order, so parameters agree to rounding (stated tolerance 1e-3
    absolute after 10 steps; we see ~1e-5), and the ranks' bytes add up exactly."""
    cfg = ShardingConfig(world_size=2, steps=10, model="wide", max_preconditioner_dim=128)
    assert DATA_SIZE % 12 == 0
    res = run_sharded(cfg)
    assert 0.0 <= res.max_abs_diff < 1e-3
    assert res.loss == pytest.approx(res.reference_loss, rel=1e-4)
    assert sum(res.per_rank_bytes) == res.reference_bytes == expected_bytes(cfg)
    assert all(b > 0 for b in res.per_rank_bytes)
    assert max(res.per_rank_bytes) <= 1.25 * res.reference_bytes / 2
    owned = [(tuple(b["key"]), b["name"]) for r in res.reports for b in r["blocks"]]
    assert len(owned) == len(set(owned))  # no block held twice
    assert all(r["comm_seconds"] > 0 for r in res.reports)


def test_a_failing_rank_is_named():
    with pytest.raises(DistributedRunError, match=r"rank 1 failed: RuntimeError: injected failure on rank 1"):
        run_sharded(ShardingConfig(world_size=2, steps=10, fault="raise", fault_rank=1))
    assert live_ranks() == []


def test_bad_configs_are_rejected():
    for kwargs in (dict(world_size=0), dict(model="nope"), dict(steps=0), dict(fault="explode")):
        with pytest.raises(ValueError):
            ShardingConfig(**kwargs)
    with pytest.raises(ValueError, match="at most 4 ranks"):  # more processes than this machine runs
        run_sharded(ShardingConfig(world_size=5))
