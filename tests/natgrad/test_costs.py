"""Cost formulas against facts.md rows 6 and 7 (closed forms)."""

import pytest

from natgrad import costs


def test_square_4096_layer_matches_facts_row_7():
    exact, kfac, diag = costs.layer_costs(4096, 4096, bias=False, dtype="float32")
    assert exact.entries == 4096**4 and f"{exact.entries:.2g}" == "2.8e+14"
    assert exact.bytes / 1e15 == pytest.approx(1.126, abs=1e-3)  # 1.13 PB
    assert kfac.entries == 2 * 4096**2 and f"{kfac.entries:.2g}" == "3.4e+07"
    assert kfac.bytes == 128 * 2**20  # 128 MiB
    assert diag.entries == 4096**2


def test_bias_adds_homogeneous_coordinate():
    exact, kfac, _ = costs.layer_costs(3, 5, bias=True)
    assert exact.entries == (3 * 6) ** 2
    assert kfac.entries == 3 * 3 + 6 * 6
    assert kfac.apply_flops == 2 * (9 * 6 + 3 * 36)


def test_factor_bytes_facts_row_6():
    assert costs.factor_bytes(32000, "float32") / 1e9 == pytest.approx(4.096)
    assert costs.factor_bytes(32000, "bfloat16") / 1e9 == pytest.approx(2.048)
    assert costs.human_bytes(costs.factor_bytes(32000)) == "4.1 GB"


def test_measure_eigh_seconds():
    assert costs.measure_eigh_seconds(10_000, max_dim=100) is None
    assert costs.measure_eigh_seconds(64, repeats=1) > 0
    with pytest.raises(ValueError):
        costs.layer_costs(0, 3)


def test_cost_ordering_holds_for_every_layer_size():
    for m, n in [(1, 1), (10, 700), (4096, 11008)]:
        e, k, d = costs.layer_costs(m, n, dtype="float64")
        assert e.entries >= k.entries or m * (n + 1) <= 2  # exact never cheaper except trivial
        assert d.entries == m * (n + 1)
        assert e.bytes == 8 * e.entries


def test_shampoo_memory_unblocked_factor_is_4_1_gb():
    r = costs.shampoo_memory(32000, 32000, dtype="float32")
    assert r.factor_bytes == 2 * 32000**2 * 4  # L and R
    assert r.total_bytes == 2 * r.factor_bytes  # plus their roots
    assert r.factor_bytes / 2 / 1e9 == pytest.approx(4.096)


def test_shampoo_memory_blocking_and_sharding():
    r = costs.shampoo_memory(32000, 4096, block_size=1024, world_size=4)
    assert r.blocks == 32 * 4  # 31 full row blocks + one of 256 rows, 4 column blocks
    expected = 4 * (2 * (31 * (1024**2 + 1024**2) + (256**2 + 1024**2)) * 4)
    assert r.total_bytes == expected
    assert sum(r.per_rank) == r.total_bytes
    assert max(r.per_rank) <= 1.25 * r.total_bytes / 4
    two = costs.shampoo_memory(1000, 1000, world_size=2)  # one block: cannot be split
    assert sorted(two.per_rank) == [0, two.total_bytes]
