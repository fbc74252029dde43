"""natgrad.bench.protocol on mini-batch runs: targets, losses and curves come from the
whole-data evaluations (Spec.eval_every), not from the noisy per-batch losses."""

from __future__ import annotations

import math

import pytest

from natgrad.bench import protocol
from natgrad.bench.protocol import GridResult
from natgrad.experiments import Spec, Trajectory


def _minibatch(lr: float, batch_losses: list[float], evals: dict[int, float], seconds_per_step: float) -> GridResult:
    n = len(batch_losses)
    traj = Trajectory(Spec.make({"lr": lr}, steps=n, batch_size=4, eval_every=2), step=list(range(n)),
                      loss=list(batch_losses), seconds=[seconds_per_step * (i + 1) for i in range(n)],
                      eval_step=list(evals), eval_loss=list(evals.values()),
                      eval_seconds=[seconds_per_step * s for s in evals])
    return GridResult("adam", {"lr": lr}, list(evals.values())[-1], "ok", seconds_per_step, traj)


def test_targets_use_the_whole_data_curve():
    # batch losses dip early (a lucky batch) where the whole-data loss does not
    a = _minibatch(1e-3, [9, 1, 8, 7, 6, 5], {0: 9, 2: 7, 4: 5, 6: 4}, 1.0)
    b = _minibatch(1e-2, [9, 0.5, 4, 3, 3, 3], {0: 9, 2: 4, 4: 3.5, 6: 3}, 2.0)
    assert a.loss_at(6) == 4 and a.loss_at(3) == 7 and b.loss_at(5) == 3.5  # the last evaluation at or before
    assert a.loss_at(7) == math.inf  # the run has 6 updates
    assert protocol.best_at([a, b], 6) is b
    rows = protocol.targets_vs_adam([a], [b], [4], name="b", hparam="lr", label="B", log=lambda s: None)
    # target 5 (a's evaluation after 4 steps); a reaches it at evaluation step 4, b at step 2 (not at batch step 1)
    assert rows[0] == dict(adam_horizon=4, target=5, adam_lr=1e-3, adam_steps=4, adam_seconds=4.0, b_lr=1e-2,
                           b_steps=2, b_seconds=4.0, step_ratio=2.0, time_ratio=1.0)
    c = protocol.curve(b)
    assert c["step"] == [0, 2, 4, 6] and c["loss"] == [9, 4, 3.5, 3] and c["seconds"] == [0.0, 4.0, 8.0, 12.0]


def test_grid_records_the_whole_data_loss_as_final(monkeypatch):
    """grid() passes eval_every to the run and reports the last evaluation as the final loss."""
    seen = {}

    def fake_run(spec):
        seen["spec"] = spec
        return Trajectory(spec, step=[0, 1], loss=[2.0, 0.1], seconds=[1.0, 2.0], eval_step=[0, 2],
                          eval_loss=[2.0, 1.5], eval_seconds=[0.0, 2.0])

    monkeypatch.setattr(protocol, "run", fake_run)
    (res,) = protocol.grid("adam", [{"lr": 1e-3}], 2, "digits-cnn", "cpu", log=lambda s: None, batch_size=4,
                           eval_every=2)
    assert seen["spec"].eval_every == 2 and seen["spec"].batch_size == 4
    assert res.final_loss == 1.5 and res.seconds_per_step == 1.0


def _full_batch(label: str, losses: list[float], status: str = "ok") -> GridResult:
    n = len(losses)
    traj = Trajectory(Spec.make({"lr": 0.1}, steps=max(n, 1)), step=list(range(n)), loss=list(losses),
                      seconds=[0.5 * (i + 1) for i in range(n)], status=status)
    return GridResult(label, {"lr": 0.1}, losses[-1] if losses else math.inf, status, 0.5, traj)


def test_the_loss_after_no_step_is_the_first_and_a_run_with_none_never_reaches():
    # (loss_at(0) read loss[-1], the last loss; with every run of the other optimizer empty, targets_vs_adam
    # raised IndexError)
    run = _full_batch("adam", [5.0, 4.0, 3.0, 2.0])
    assert [run.loss_at(s) for s in range(6)] == [5.0, 5.0, 4.0, 3.0, 2.0, math.inf]
    failed = _full_batch("kfac", [], status="error")
    assert failed.loss_at(0) == math.inf
    rows = protocol.targets_vs_adam([run], [failed], [3], name="kfac", hparam="lr", label="K-FAC", log=lambda s: None)
    assert rows[0]["kfac_steps"] is None and rows[0]["step_ratio"] is None and rows[0]["time_ratio"] is None


def test_a_target_reached_at_once_has_an_infinite_ratio_not_none():
    # (step 0 read as "never reached": step_ratio None while time_ratio was filled in)
    adam = _full_batch("adam", [5.0, 4.0, 3.0, 2.0])
    quick = _full_batch("kfac", [2.0, 1.0])
    row = protocol.targets_vs_adam([adam], [quick], [4], name="kfac", hparam="lr", label="K-FAC", log=lambda s: None)[0]
    assert row["kfac_steps"] == 0 and row["step_ratio"] == math.inf


def test_saved_results_are_json_and_loads_refuse_what_is_no_result(tmp_path):
    import numpy as np

    path = tmp_path / "r.json"
    protocol.save({"x": np.float32(1.5), "n": np.int64(3), "bad": np.float32("nan")}, path)
    assert protocol.load(path) == {"x": 1.5, "n": 3, "bad": None}
    for text in ("{}", "[]", "null", "[1, 2]"):  # valid JSON, but no result: a report would fail on it
        path.write_text(text)
        assert protocol.load(path) is None


def test_side_by_side_timing_refuses_what_it_cannot_time():
    # (blocks=0 was a StatisticsError, block=0 a ZeroDivisionError, no optimizer a bare StopIteration)
    from natgrad.bench.timing import side_by_side

    for kwargs in ({"blocks": 0}, {"block": 0}, {"warmup_blocks": -1}):
        with pytest.raises(ValueError, match="need blocks"):
            side_by_side({"adam": None}, lambda: None, **kwargs)
    with pytest.raises(ValueError, match="at least one optimizer"):
        side_by_side({}, lambda: None)
