"""Shampoo's per-factor memory (L, R and their inverse roots), blocked and not,
against block-by-block enumeration and facts.md row 6."""

from __future__ import annotations

import itertools

import pytest

from natgrad import costs


def test_unblocked_32000_factor_is_4_096e9_bytes_in_fp32():
    L, L_root, R, R_root = costs.shampoo_factor_costs(32000, 4096)
    assert L.entries == 32000**2 == 1_024_000_000
    assert L.bytes == L_root.bytes == 4_096_000_000 == costs.factor_bytes(32000)
    assert costs.human_bytes(L.bytes) == "4.1 GB"
    assert R.bytes == R_root.bytes == 4096**2 * 4
    assert costs.shampoo_factor_costs(32000, 4096, dtype="bfloat16")[0].bytes == 2_048_000_000
    assert costs.shampoo_factor_costs(32000, 4096, dtype="float64")[0].bytes == 8_192_000_000
    assert L.invert_flops == costs.EIGH_FLOPS * 32000.0**3 and L_root.invert_flops == 0
    assert L_root.apply_flops == 2.0 * 32000**2 * 4096 and R_root.apply_flops == 2.0 * 32000 * 4096**2


def _enumerate(m, n, block):
    def pieces(d):
        if block is None:
            return [d]
        return [min(block, d - s) for s in range(0, d, block)]

    blocks = list(itertools.product(pieces(m), pieces(n)))
    return blocks, sum(bm * bm for bm, _ in blocks), sum(bn * bn for _, bn in blocks)


@pytest.mark.parametrize("m, n, block", [(32000, 4096, 1024), (1000, 300, 128), (7, 5, 3), (64, 64, 64),
                                         (100, 33, None), (4096, 11008, 1024)])
def test_blocked_factors_equal_the_sum_over_blocks(m, n, block):
    blocks, left, right = _enumerate(m, n, block)
    L, L_root, R, R_root = costs.shampoo_factor_costs(m, n, block_size=block)
    assert (L.entries, R.entries) == (left, right)
    assert L_root.entries == left and R_root.entries == right
    assert costs.shampoo_blocks(m, n, block) == len(blocks)
    mem = costs.shampoo_memory(m, n, block_size=block)
    assert mem.blocks == len(blocks)
    assert L.bytes + R.bytes == mem.factor_bytes and L_root.bytes + R_root.bytes == mem.root_bytes


def test_lesson_worked_case_embedding_blocked_at_1024():
    """32 x 4 = 128 blocks, about 2.1 GB (lesson 4's text)."""
    parts = costs.shampoo_factor_costs(32000, 4096, block_size=1024)
    total = sum(c.bytes for c in parts)
    assert costs.shampoo_blocks(32000, 4096, 1024) == 128
    left = 4 * (31 * 1024**2 + 256**2)  # 4 column blocks, each with 31 full row blocks and one of 256 rows
    right = 128 * 1024**2  # every block is 1024 wide
    assert total == 4 * 2 * (left + right)  # fp32, statistic and root
    assert costs.human_bytes(total) == "2.12 GB"


def test_bad_sizes_raise():
    with pytest.raises(ValueError):
        costs.shampoo_factor_costs(0, 5)
    with pytest.raises(ValueError):
        costs.shampoo_factor_costs(5, 5, block_size=0)
