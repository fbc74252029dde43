"""natgrad.bench.protocol on mini-batch runs: targets, losses and curves come from the
whole-data evaluations (Spec.eval_every), not from the noisy per-batch losses."""

from __future__ import annotations

import math

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
