"""The pieces of ``python -m natgrad.bench sophia``: protocol budgets, the loss a horizon reads
from whole-data evaluations, side-by-side seconds, the report of a synthetic result, a tiny
real run through the command line, and the stored result against what lesson 6 says."""

from __future__ import annotations

import json
import math
import re

import pytest

from natgrad.bench import sophia as bench
from natgrad.bench.__main__ import main
from natgrad.bench.protocol import GridResult, machine, to_jsonable
from natgrad.experiments import Spec, Trajectory
from tests.conftest import ROOT


def test_protocol_budgets():
    """AdamW on at least 6 learning rates; each Sophia variant on exactly as many runs."""
    for quick in (False, True):
        p = bench.protocol(quick)
        assert len(p["horizons"]) == 3 and all(h % p["eval_every"] == 0 for h in p["horizons"])
        assert {len(v) for v in p["sophia_points"].values()} == {len(p["adamw_lrs"])}
        assert set(p["sophia_points"]) == set(bench.METHODS) and p["update_period"] == 10
    assert len(bench.protocol(False)["adamw_lrs"]) >= 6


def test_loss_at_reads_the_evaluation_made_at_the_horizon():
    """An evaluation at step s is the whole-data loss after s updates: horizon 4 reads the
    evaluation at 4, horizon 3 the one at 2; a run that ended earlier reads inf."""
    traj = Trajectory(Spec(), step=[0, 1, 2, 3], loss=[9.0, 8.0, 7.0, 6.0], seconds=[1, 2, 3, 4],
                      eval_step=[0, 2, 4], eval_loss=[5.0, 3.0, 1.0], eval_seconds=[0, 2, 4])
    r = GridResult("adamw", {"lr": 1e-3}, 1.0, "ok", 1.0, traj)
    assert [r.loss_at(s) for s in (1, 2, 3, 4, 5)] == [5.0, 3.0, 3.0, 1.0, math.inf]
    full = GridResult("adamw", {}, 6.0, "ok", 1.0, Trajectory(Spec(), step=[0, 1], loss=[9.0, 8.0], seconds=[1, 2]))
    assert [full.loss_at(1), full.loss_at(2), full.loss_at(3)] == [9.0, 8.0, math.inf]


def test_side_by_side_seconds_are_steps_times_the_median_step_time():
    targets = {"Sophia-G": [dict(adam_steps=100, sophia_steps=50), dict(adam_steps=200, sophia_steps=None)]}
    bench.add_side_by_side_seconds(targets, {"AdamW": 0.01, "Sophia-G": 0.012})
    first, second = targets["Sophia-G"]
    assert first["adam_seconds_sbs"] == pytest.approx(1.0) and first["sophia_seconds_sbs"] == pytest.approx(0.6)
    assert first["time_ratio_sbs"] == pytest.approx(1 / 0.6)
    assert second["sophia_seconds_sbs"] is None and second["time_ratio_sbs"] is None


def _synthetic() -> dict:
    p = bench.protocol(quick=True)
    rows = {label: [dict(adam_horizon=h, target=3.0 - h / 100, adam_lr=3e-3, adam_steps=h, adam_seconds=h * 0.01,
                         sophia_lr=1e-3, sophia_rho=0.3, sophia_steps=h + 50 if label == "Sophia-G" else None,
                         sophia_seconds=(h + 50) * 0.012 if label == "Sophia-G" else None,
                         step_ratio=h / (h + 50) if label == "Sophia-G" else None,
                         time_ratio=h * 0.01 / ((h + 50) * 0.012) if label == "Sophia-G" else None)
                    for h in p["horizons"]] for label in bench.METHODS}
    sps = {"AdamW": 0.010, "Sophia-G": 0.011, "Sophia-H": 0.0135}
    timing = dict(seconds_per_step=sps, mean_seconds_per_step=sps, final_loss={k: 2.5 for k in sps}, blocks=5,
                  block=10, threads=1, ratio_to_adamw={k: sps[k] / 0.01 for k in bench.METHODS}, adamw_lr=3e-3,
                  sophia_hparams={})
    bench.add_side_by_side_seconds(rows, sps)
    final = {label: dict(loss=2.5 + i / 10, hparams={"lr": 3e-3, "rho": 0.3} if i else {"lr": 3e-3},
                         seconds_per_step=sps[label]) for i, label in enumerate(sps)}
    r = dict(quick=True, device="cpu", machine=machine(), protocol=p, text_characters=76000, targets=rows,
             final=final, timing=timing)
    r["goals"] = bench.goals(r)
    return to_jsonable(r)


def test_report_of_a_synthetic_result(tmp_path):
    r = _synthetic()
    text = bench.report(r)
    assert "Sophia vs tuned AdamW" in text and "76000 characters" in text
    assert "target (AdamW@steps) AdamW steps Sophia-G steps" in text
    assert "AdamW 1.00 s, Sophia-G 1.65 s (ratio 0.61)" in text  # 100 steps x 10 ms vs 150 x 11 ms (AdamW@100)
    assert "Sophia-H time per step within 1.3x of AdamW's at k = 10 (side by side): measured 1.35x" in text
    assert [g["met"] for g in r["goals"]] == [True, False]
    assert "MISSED" not in text and "[met" not in text  # figures, not verdicts
    path = tmp_path / "sophia.json"
    bench.save(r, path)
    assert bench.report(bench.load(path)) == text


def test_time_per_step_side_by_side_returns_positive_ratios():
    t = bench.time_per_step(blocks=1, block=2, warmup_blocks=0)
    assert set(t["seconds_per_step"]) == {"AdamW", "Sophia-G", "Sophia-H"}
    assert all(s > 0 for s in t["seconds_per_step"].values()) and set(t["ratio_to_adamw"]) == set(bench.METHODS)


def test_command_line_runs_a_tiny_protocol(tmp_path, monkeypatch, capsys):
    tiny = dict(bench.protocol(True), horizons=[2, 4], eval_every=2, timing_blocks=1, adamw_lrs=[3e-3],
                sophia_points={"Sophia-G": [(1e-3, 0.3)], "Sophia-H": [(1e-3, 1.0)]})
    monkeypatch.setattr(bench, "protocol", lambda quick: tiny)
    out = tmp_path / "s.json"
    assert main(["sophia", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = bench.load(out)
    assert "Goals:" in printed and r["quick"] is True and r["final"]["AdamW"]["hparams"]["lr"] == 3e-3
    assert len(r["targets"]["Sophia-G"]) == 2 and r["curves"]["Sophia-H"]["step"] == [0, 2, 4]
    assert r["text_characters"] > 50_000


def test_stored_results_support_what_the_sophia_lesson_says():
    """lessons/06-sophia quotes docs/bench/sophia.json; rerunning the benchmark must not silently
    contradict the lesson. Every number the lesson states is read back from the stored JSON."""
    r = bench.load(ROOT / "docs" / "bench" / "sophia.json")
    assert r is not None and not r["quick"]
    lesson = (ROOT / "lessons" / "06-sophia" / "lesson.md").read_text()
    steps = max(r["protocol"]["horizons"])
    for label, f in r["final"].items():
        assert f"{label} {f['loss']:.2f}" in lesson, f"the lesson should quote {label}'s final loss"
    assert f"after {steps} steps" in lesson
    for label, ratio in r["timing"]["ratio_to_adamw"].items():
        assert f"{label} {ratio:.2f}x" in lesson
    quoted = dict(re.findall(r"(Sophia-[GH]) needed ([\d.]+)x AdamW's steps", lesson))
    for label, rows in r["targets"].items():
        hard = rows[-1]
        if hard["step_ratio"] is None:
            assert f"{label} did not reach" in lesson
        else:
            assert quoted[label] == f"{1 / hard['step_ratio']:.2f}"
    assert json.dumps(r)  # plain JSON
