"""The pieces of ``python -m natgrad.bench kfac`` with tiny settings: targets on whole-data
evaluation curves, the per-task protocols, the goals and the report of a synthetic result,
and the side-by-side timing on a real task."""

from __future__ import annotations

import math

import pytest

from natgrad.bench import kfac as bench
from natgrad.bench import protocol
from natgrad.bench.protocol import GridResult
from natgrad.experiments import Spec, Trajectory


def _eval_result(optimizer: str, hp: dict, evals: list[float], every: int, seconds_per_step: float) -> GridResult:
    """A mini-batch run with whole-data losses at steps 0, every, 2 every, ..."""
    steps = every * (len(evals) - 1)
    traj = Trajectory(Spec.make(hp, optimizer=optimizer, steps=steps, eval_every=every), step=list(range(steps)),
                      loss=[9.0] * steps, seconds=[seconds_per_step * (i + 1) for i in range(steps)],
                      eval_step=[every * k for k in range(len(evals))], eval_loss=list(evals),
                      eval_seconds=[seconds_per_step * every * k for k in range(len(evals))])
    return GridResult(optimizer, hp, evals[-1], "ok", seconds_per_step, traj)


def test_targets_and_losses_come_from_the_evaluation_curves():
    adam = [_eval_result("adam", {"lr": 1e-3}, [2.0, 1.0, 0.5, 0.3, 0.2], 10, 1.0),
            _eval_result("adam", {"lr": 1e-2}, [2.0, 0.8, 0.6, 0.55, 0.5], 10, 1.0)]
    kfac = [_eval_result("kfac", {"damping": 0.1}, [2.0, 0.4, 0.1], 10, 3.0)]
    assert adam[0].loss_at(20) == 0.5 and adam[0].loss_at(25) == 0.5 and adam[0].loss_at(41) == math.inf
    rows = protocol.targets_vs_adam(adam, kfac, [10, 40], name="kfac", hparam="damping", label="K-FAC",
                                    log=lambda s: None)
    # @10: lr 1e-2 is best (0.8), K-FAC's evaluation at step 10 (0.4) is below it
    assert rows[0]["target"] == 0.8 and rows[0]["adam_steps"] == 10 and rows[0]["kfac_steps"] == 10
    # @40: lr 1e-3 (0.2); K-FAC gets there at its evaluation of step 20: 2x fewer steps, 40 s vs 60 s
    assert rows[1]["target"] == 0.2 and rows[1]["adam_steps"] == 40 and rows[1]["kfac_steps"] == 20
    assert rows[1]["step_ratio"] == 2.0 and rows[1]["time_ratio"] == pytest.approx(40 / 60)
    c = protocol.curve(kfac[0])
    assert c["step"] == [0, 10, 20] and c["loss"] == [2.0, 0.4, 0.1]


@pytest.mark.parametrize("task", list(bench.TASKS))
@pytest.mark.parametrize("quick", [True, False])
def test_every_task_has_a_protocol_with_enough_adam_learning_rates(task, quick):
    p = bench.protocol(task, quick)
    assert len(p["adam_lrs"]) >= (2 if quick else 8)
    assert p["kfac_steps"] >= p["compare_at"] and max(p["horizons"]) >= p["compare_at"]
    assert all("damping" in g for g in p["kfac_grid"])
    if task == "digits-cnn":
        assert p["batch_size"] == 256 and p["eval_every"] and all(h % p["eval_every"] == 0 for h in p["horizons"])
    with pytest.raises(ValueError, match="unknown task"):
        bench.protocol("mnist", quick)


def _task_result(task: str, hard_steps: tuple[int, int], failed=(), loss_ratio=1.5, per_step=3.0) -> dict:
    p = bench.protocol(task, quick=False)
    targets = [dict(adam_horizon=h, target=1.0 / h, adam_lr=1e-2, adam_steps=h, adam_seconds=h * 1.0,
                    kfac_damping=0.1, kfac_steps=h // 10, kfac_seconds=h * 0.3, step_ratio=10.0,
                    time_ratio=1 / 0.3, time_ratio_side_by_side=10 / per_step) for h in p["horizons"]]
    a, k = hard_steps
    targets[-1].update(adam_steps=a, kfac_steps=k, step_ratio=a / k, time_ratio=a / (k * per_step))
    timing = dict(seconds_per_step={"Adam": 0.01, "K-FAC": 0.01 * per_step}, blocks=6, block=50,
                  kfac_vs_adam=per_step)
    return dict(task=task, title=bench.TASKS[task], quick=False, device="cpu", machine=protocol.machine(),
                protocol=p, targets=targets,
                compare=dict(steps=p["compare_at"], adam_loss=0.3, adam_lr=1e-2, kfac_loss=0.3 / loss_ratio,
                             kfac_damping=0.1, loss_ratio=loss_ratio),
                adam_seconds_per_step=0.01, kfac_seconds_per_step=0.03, time_per_step_ratio=3.0, timing=timing,
                kfac_failed=list(failed), adam_grid=[], kfac_grid=[], curves={})


def test_goals_and_report_of_a_synthetic_result():
    r = dict(quick=False, device="cpu", machine=protocol.machine(), wall_seconds=3600.0, tasks={
        "digits-autoencoder": _task_result("digits-autoencoder", (4318, 136), per_step=2.5),
        "digits-classifier": _task_result("digits-classifier", (5000, 1250), failed=[1.0]),
        "digits-cnn": _task_result("digits-cnn", (2000, 300), loss_ratio=0.5, per_step=4.5),
    })
    g = {(x["task"], x["goal"].split(": ", 1)[1]): x for x in bench.goals(r)}
    ae = "digits-autoencoder"
    assert g[(ae, ">= 28x fewer steps at the hardest target (kept)")]["met"]  # 4318 / 136 = 31.8
    assert g[(ae, ">= 9.9x less wall-clock at the hardest target (kept)")]["met"]  # 31.8 / 2.5 = 12.7
    clf = {k[1]: v for k, v in g.items() if k[0] == "digits-classifier"}
    assert not clf[">= 5x fewer steps than tuned Adam at the hardest target"]["met"]  # 5000 / 1250 = 4
    assert not clf["no K-FAC grid setting diverges within 3000 steps"]["met"]
    cnn = {k[1]: v for k, v in g.items() if k[0] == "digits-cnn"}
    assert cnn[">= 5x fewer steps than tuned Adam at the hardest target"]["met"]
    assert not cnn[">= 2x less wall-clock than tuned Adam at the hardest target"]["met"]  # 6.7 / 4.5 = 1.48
    assert not cnn["K-FAC's loss after 1000 steps no worse than Adam's (Adam / K-FAC >= 1)"]["met"]
    assert not cnn["K-FAC at its defaults within 4x of Adam's time per step (side by side)"]["met"]
    r["goals"] = bench.goals(r)
    text = bench.report(r)
    for title in bench.TASKS.values():
        assert title in text
    assert "diverged or failed at damping0 [1.0]" in text and "Benchmark wall time: 60.0 min" in text
    assert "K-FAC 45.00 ms (4.50x)" in text and "measured 6.67x" in text


def test_a_single_task_result_keeps_its_report():
    r = _task_result("digits-autoencoder", (4318, 154))
    for key in ("task", "title", "timing", "kfac_failed"):
        r.pop(key)
    lines = bench.report(r).splitlines()
    assert lines[0].startswith("K-FAC vs tuned Adam, digits autoencoder, full batch (full protocol")
    assert lines[2:6] == protocol.target_table(r["targets"], "kfac", "K-FAC")


def test_time_per_step_side_by_side_on_the_classifier():
    t = bench.time_per_step("digits-classifier", 1e-2, {"damping": 0.1}, blocks=2, block=2)
    assert set(t["seconds_per_step"]) == {"Adam", "K-FAC"} and t["kfac_vs_adam"] > 0
    assert all(math.isfinite(v) for v in t["final_loss"].values())
