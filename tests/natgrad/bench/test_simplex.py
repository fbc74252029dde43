"""The pieces of ``python -m natgrad.bench simplex`` with tiny settings: tuning picks the fewest steps,
the ratio is projected GD's steps over the natural gradient's, the report and JSON round trip, and the
stored full result holds the figures the lab reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natgrad.bench import simplex as bench
from natgrad.bench.__main__ import BENCHES
from natgrad.experiments import Spec, run
from tests.conftest import ROOT

STORED = ROOT / "docs" / "bench" / "simplex.json"
PROTOCOL = bench.protocol


def _tiny(quick: bool) -> dict:
    p = PROTOCOL(True)
    return dict(p, targets=[[0.7, 0.2, 0.1]], steps=40,
                lrs={"natural gradient": [0.5, 1.0], "natural gradient (exact exp map)": [1.0],
                     "projected GD": [0.1, 0.178]})


def test_benchmark_with_a_tiny_protocol(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "protocol", _tiny)
    r = bench.benchmark(quick=True, log=lambda s: None)
    (row,) = r["rows"]
    # each method's tuned steps are the fewest over its grid, measured here by run() directly
    for label, (optimizer, options) in bench.METHODS.items():
        steps = [run(Spec.make({"lr": lr}, {"target": (0.7, 0.2, 0.1), "start": bench.START, **options},
                               task="simplex-kl", optimizer=optimizer, steps=40, dtype="float64")).steps_to(1e-10)
                 for lr in _tiny(True)["lrs"][label]]
        assert row[label]["steps"] == min(s for s in steps if s is not None)
    assert row["ratio"] == row["projected GD"]["steps"] / row["natural gradient"]["steps"]
    assert r["min_ratio"] == r["median_ratio"] == row["ratio"]
    text = bench.report(r)
    assert f"{row['ratio']:.1f}x" in text and "natural gradient" in text and "projected GD" in text
    bench.save(r, tmp_path / "s.json")
    assert bench.load(tmp_path / "s.json") == json.loads(json.dumps(r))


def test_a_target_projected_gd_never_reaches_gives_a_lower_bound():
    r = dict(quick=True, protocol=dict(bench.protocol(True), steps=150), min_ratio=37.5, median_ratio=37.5,
             rows=[dict(target=[0.9, 0.09, 0.01], ratio=None, ratio_at_least=37.5,
                        **{label: dict(steps=4 if label != "projected GD" else None, lr=1.0) for label in bench.METHODS})])
    assert ">=38x" in bench.report(r) and "n/a steps" in bench.report(r)


def test_registered_and_protocol():
    assert BENCHES["simplex"][0] is bench
    full, quick = bench.protocol(False), bench.protocol(True)
    assert full["tolerance"] == quick["tolerance"] == 1e-10 and full["dtype"] == "float64"
    assert len(full["targets"]) == 6 and len(quick["targets"]) == 3 and len(full["lrs"]["projected GD"]) == 25
    assert all(abs(sum(t) - 1) < 1e-12 and t != list(bench.START) for t in full["targets"])


def _rounded(x):
    """``x`` with every float rounded to 12 significant digits (nested dicts and lists)."""
    if isinstance(x, float):
        return float(f"{x:.12g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


@pytest.mark.skipif(not STORED.exists(), reason="no stored benchmark result")
def test_stored_full_result_is_consistent():
    r = bench.load(STORED)
    # the learning-rate grids are np.geomspace, whose last bit differs between numpy builds
    assert r["quick"] is False and _rounded(r["protocol"]) == _rounded(bench.protocol(False))
    ratios = [row["ratio"] if row["ratio"] is not None else row["ratio_at_least"] for row in r["rows"]]
    # the lesson's claim: the natural gradient needs fewer steps on every target (the ratio depends on the target)
    assert r["min_ratio"] == pytest.approx(min(ratios)) and r["min_ratio"] > 1
    assert r["median_ratio"] == pytest.approx(float(np.median(ratios)))
    for row in r["rows"]:
        ng, pgd = row["natural gradient"], row["projected GD"]
        assert ng["steps"] is not None and (row["ratio"] is None or row["ratio"] == pgd["steps"] / ng["steps"])
