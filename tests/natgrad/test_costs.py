"""Cost formulas against closed forms (Martens & Grosse 2015, s. 4; 32000^2 fp32 factors)
and Shampoo's per-factor memory, blocked and not, against block-by-block enumeration."""

import itertools

import pytest

from natgrad import costs


def test_square_4096_layer_matches_closed_form():
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


def test_factor_bytes_closed_form():
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


def test_kfac_layer_costs_of_the_digits_cnn_by_hand():
    """Two 3x3 convolutions on 8x8 images (64 output pixels each) and a 2048 -> 10 head, batch 256:
    the head's 2049-wide A is the only factor above wide_factor_dim (1024). Its batches have 256
    rows and, with decay 0.95^50 per refresh every wide_update_steps (50), two are kept: 512 rows,
    at most half of 2049, so it is a low-rank factor applied by the Woodbury identity (Gram
    matrix 2 r^2 d, its Cholesky factor r^3/3, 4 r d + 2 r^2 per gradient row). With batches of
    1024 (2048 rows kept) it is a Cholesky factor (d^3/3); everything else by eigh every 10 steps."""
    from natgrad.tasks.digits import digits_cnn, load_digits_tensors

    X, _ = load_digits_tensors()
    rows = costs.kfac_layer_costs(digits_cnn(seed=0), X[:256])
    assert [(c.kind, c.a_dim, c.g_dim, c.rows, c.methods) for c in rows] == [
        ("Conv2d", 1 * 9 + 1, 16, 256 * 64, ("eigh", "eigh")),
        ("Conv2d", 16 * 9 + 1, 32, 256 * 64, ("eigh", "eigh")),
        ("Linear", 2048 + 1, 10, 256, ("woodbury", "eigh")),
    ]
    head, r = rows[2], 512
    assert head.statistics_flops == (256.0 * 2049, 2.0 * 256 * 10**2)
    assert head.invert_flops == (2.0 * r * r * 2049 + r**3 / 3, costs.EIGH_FLOPS * 10**3)
    assert head.apply_flops == 10 * (4.0 * r * 2049 + 2.0 * r * r) + 2.0 * 2049 * 10**2
    assert head.per_step_flops == pytest.approx(256.0 * 2049 / 50 + 2.0 * 256 * 100 / 10 + head.invert_flops[0] / 50
                                                + costs.EIGH_FLOPS * 1000 / 10 + head.apply_flops)
    assert head.bytes == (2 * r * 2049 + r * r + 2 * 10**2) * 4

    big = costs.kfac_layer_costs(digits_cnn(seed=0), X[:1024])[2]
    assert big.methods == ("cholesky", "eigh")
    assert big.statistics_flops == (2.0 * 1024 * 2049**2, 2.0 * 1024 * 10**2)
    assert big.invert_flops == (2049**3 / 3, costs.EIGH_FLOPS * 10**3)
    assert big.apply_flops == 2.0 * (10**2 * 2049 + 10 * 2049**2)
    assert big.bytes == 2 * (2049**2 + 10**2) * 4
    fast = costs.kfac_layer_costs(digits_cnn(seed=0), X[:256], wide_factor_dim=4096, inverse_update_steps=1)
    assert fast[2].methods == ("eigh", "eigh") and fast[2].inverses_per_step == pytest.approx(
        costs.EIGH_FLOPS * (2049**3 + 10**3))


def test_fit_cubic_recovers_a_synthetic_cubic():
    sizes = [256, 512, 1024]
    assert costs.fit_cubic(sizes, [2e-9 * d**3 for d in sizes]) == pytest.approx(2e-9, rel=1e-12)


def test_inversion_times_measure_what_fits_and_extrapolate_the_rest():
    """A synthetic device whose eigendecomposition takes exactly 3e-10 d^3 s, plus a fixed
    1 ms overhead: sizes up to max_dim are measured (each once), larger ones come from the
    least-squares d^3 fit of the measured points, labelled as extrapolated."""
    calls = []

    def measure(d):
        calls.append(d)
        return 1e-3 + 3e-10 * d**3

    dims = {"A (n+1)": 4097, "G (m)": 512, "exact block": 4096 * 4097}
    rows, ladder, c = costs.inversion_times(dims, measure, max_dim=1024)
    assert [r.name for r in rows] == list(dims) and [r.measured for r in rows] == [False, True, False]
    assert rows[1].seconds == 1e-3 + 3e-10 * 512**3
    assert sorted(calls) == [128, 256, 512, 1024]  # 512 measured once, for its row and for the fit
    assert [p.size for p in ladder] == [128, 256, 1024]
    # the fit uses 256, 512, 1024 (128 is overhead-dominated): close to the true constant
    assert c == pytest.approx(3e-10, rel=0.05)
    assert rows[0].seconds == pytest.approx(3e-10 * 4097**3, rel=0.05)
    assert rows[2].seconds == pytest.approx(c * float(4096 * 4097) ** 3)


def test_inversion_times_measure_nothing_more_when_everything_fits():
    rows, ladder, _ = costs.inversion_times({"G": 64}, lambda d: 1e-6 * d, max_dim=1024)
    assert ladder == [] and rows[0].measured and rows[0].seconds == 64e-6


def test_human_seconds():
    assert costs.human_seconds(0.0032) == "3.2 ms"
    assert costs.human_seconds(12.0) == "12 s"
    assert costs.human_seconds(3 * 3600.0) == "3 hours"
    assert costs.human_seconds(2 * 365.25 * 86400) == "2 years"
    assert costs.human_seconds(4.5e-7) == "450 ns"
    assert costs.human_seconds(0.0) == "0 µs"
    assert costs.human_seconds(-0.0032) == "-3.2 ms"
    assert costs.human_seconds(float("nan")) == "n/a"
    # one of a unit is singular, and the unit is chosen after rounding to the 3 digits written
    assert costs.human_seconds(60.0) == "1 minute" and costs.human_seconds(61.0) == "1.02 minutes"
    assert costs.human_seconds(59.9996) == "1 minute" and costs.human_seconds(3599.9) == "1 hour"
    assert costs.human_seconds(0.99996e-3) == "1 ms" and costs.human_seconds(86400.0) == "1 day"


def test_human_bytes_reads_for_any_number():
    assert costs.human_bytes(999) == "999 B" and costs.human_bytes(4.1e9) == "4.1 GB"
    assert costs.human_bytes(-2.5e6) == "-2.5 MB"
    assert costs.human_bytes(999.5) == "1 kB" and costs.human_bytes(999.6e6) == "1 GB"  # never "1e+03 B"
    assert costs.human_bytes(float("inf")) == costs.human_bytes(float("nan")) == "n/a"


@pytest.mark.parametrize("call", [
    lambda: costs.shampoo_blocks(10, 6, 0), lambda: costs.shampoo_blocks(10, 6, -3), lambda: costs.shampoo_blocks(0, 6, 4),
    lambda: costs.factor_bytes(-5), lambda: costs.layer_costs(2.5, 3), lambda: costs.layer_costs(4, 0),
    lambda: costs.shampoo_factor_costs(10, 6, block_size=0), lambda: costs.shampoo_memory(10, 6, world_size=0),
    lambda: costs.shampoo_memory(10, 6, block_size=1.5)])
def test_sizes_that_are_not_whole_positive_numbers_are_refused(call):
    # (before, shampoo_blocks(10, 6, 0) divided by zero, (10, 6, -3) gave 0 blocks, (0, 6, 4) gave 2 and
    # factor_bytes(-5) 100 bytes)
    with pytest.raises(ValueError, match="whole numbers? of at least 1"):
        call()


def test_whole_sizes_of_any_integer_type_are_taken():
    import numpy as np

    assert costs.shampoo_blocks(np.int64(10), 6, 4) == 3 * 2 == costs.shampoo_blocks(10.0, 6, 4)
    assert costs.factor_bytes(np.int32(3)) == 9 * 4
    assert [c.entries for c in costs.layer_costs(4.0, 3)] == [c.entries for c in costs.layer_costs(4, 3)]
