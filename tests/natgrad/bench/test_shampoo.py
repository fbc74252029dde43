"""The pieces of ``python -m natgrad.bench shampoo`` with tiny settings: targets
from hand-built trajectories, the report of a synthetic result, JSON round trip,
the side-by-side timer and the sharded measurement on 2 gloo ranks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from natgrad.bench import kfac, protocol, shampoo_timing
from natgrad.bench import shampoo as bench
from natgrad.bench.__main__ import main
from natgrad.bench.protocol import GridResult
from natgrad.experiments import Spec, Trajectory
from natgrad.presets import SHAMPOO_CONFIGS, SHAMPOO_TASK_SETTINGS
from tests.conftest import ROOT

SMALL = (64, 16, 64)


def _result(optimizer: str, lr: float, losses: list[float], seconds_per_step: float) -> GridResult:
    traj = Trajectory(Spec.make({"lr": lr}, optimizer=optimizer, steps=len(losses)), step=list(range(len(losses))),
                      loss=list(losses), seconds=[seconds_per_step * (i + 1) for i in range(len(losses))])
    return GridResult(optimizer, {"lr": lr}, losses[-1], "ok", seconds_per_step, traj)


def test_targets_from_hand_built_trajectories():
    adam = [_result("adam", 1e-3, [8, 6, 5, 4, 3, 2.5], 1.0),
            _result("adam", 1e-2, [8, 4, 3.5, 3.2, 3.1, 3.0], 1.0)]
    shampoo = [_result("shampoo", 3e-3, [8, 5, 3, 2, 1, 0.5], 2.0),
               _result("shampoo", 7e-3, [8, 3.4, 3, 3, 3, 3], 2.0)]
    logged = []
    rows = protocol.targets_vs_adam(adam, shampoo, [2, 6], name="shampoo", hparam="lr", label="Shampoo",
                                    log=logged.append)
    # @2: tuned Adam is lr 1e-2 (loss 4 after 2 steps: reached at step index 1); 7e-3 gets there first (step 1)
    assert rows[0] == dict(adam_horizon=2, target=4, adam_lr=1e-2, adam_steps=1, adam_seconds=2.0, shampoo_lr=7e-3,
                           shampoo_steps=1, shampoo_seconds=4.0, step_ratio=1.0, time_ratio=0.5)
    # @6: tuned Adam is lr 1e-3 (2.5 at index 5); Shampoo 3e-3 is below 2.5 from index 3, 7e-3 never
    assert rows[1] == dict(adam_horizon=6, target=2.5, adam_lr=1e-3, adam_steps=5, adam_seconds=6.0, shampoo_lr=3e-3,
                           shampoo_steps=3, shampoo_seconds=8.0, step_ratio=5 / 3, time_ratio=0.75)
    assert len(logged) == 2 and "Shampoo 3 steps / 8.00s" in logged[1]
    # a target no grid point reaches: the lowest final loss is named, no steps, no ratios
    rows = protocol.targets_vs_adam(adam, shampoo[1:], [6], name="shampoo", hparam="lr", label="Shampoo",
                                    log=logged.append)
    assert rows[0]["shampoo_steps"] is None and rows[0]["step_ratio"] is None and rows[0]["shampoo_lr"] == 7e-3
    c = protocol.compare_at(adam, shampoo, 6, name="shampoo", hparam="lr")
    assert c == dict(steps=6, adam_loss=2.5, adam_lr=1e-3, shampoo_loss=0.5, shampoo_lr=3e-3, loss_ratio=5.0)


def test_target_table_is_kfac_reports_table():
    """protocol.target_table reproduces kfac.report's table, so kfac.py can switch to it."""
    targets = [dict(adam_horizon=100, target=1.234, adam_lr=1e-2, adam_steps=99, adam_seconds=0.7, kfac_damping=0.1,
                    kfac_steps=20, kfac_seconds=0.5, step_ratio=4.95, time_ratio=1.4),
               dict(adam_horizon=1000, target=0.2, adam_lr=1e-2, adam_steps=999, adam_seconds=7.0, kfac_damping=1.0,
                    kfac_steps=None, kfac_seconds=None, step_ratio=None, time_ratio=None)]
    r = dict(quick=True, device="cpu", machine=dict(torch="x", threads=1), targets=targets,
             compare=dict(steps=600, adam_loss=0.3, adam_lr=1e-2, kfac_loss=0.2, kfac_damping=0.1, loss_ratio=1.5),
             adam_seconds_per_step=7e-3, kfac_seconds_per_step=2e-2, time_per_step_ratio=2.9)
    lines = kfac.report(r).splitlines()
    assert lines[2:5] == protocol.target_table(targets, "kfac", "K-FAC")


def _task_result(task: str, p: dict, theirs: bool) -> dict:
    targets = [dict(adam_horizon=h, target=1.0 / h, adam_lr=1e-2, adam_steps=h - 1, adam_seconds=h * 7e-3,
                    shampoo_lr=4e-3, shampoo_steps=(h - 1) // 4, shampoo_seconds=h * 7e-3 / 3.5,
                    step_ratio=(h - 1) / ((h - 1) // 4), time_ratio=3.5, shampoo_exponent_override=2,
                    shampoo_statistics="ema") for h in p["horizons"]]
    names = ["Adam", "natgrad Shampoo"] + (["pytorch-optimizer Shampoo", bench.SAME_WORK] if theirs else [])
    sps = dict(zip(names, [7e-3, 8.5e-3, 9e-3, 8e-3], strict=False))
    autoencoder = task == "digits-autoencoder"
    timing = dict(seconds_per_step=sps, mean_seconds_per_step=sps, final_loss={n: 1.0 for n in names},
                  theirs=("pytorch_optimizer 4.1.0" if theirs else "not installed") if autoencoder else "not timed",
                  blocks=10, block=10, lr=4e-3, adam_lr=1e-2, their_lr=1e-3, threads=1, ours_vs_adam=8.5 / 7,
                  ours_vs_theirs=8.5 / 9 if theirs else None, same_work_vs_theirs=8 / 9 if theirs else None,
                  task=task, batch_size=p["batch_size"], settings={})
    grid = [dict(label="shampoo", hparams=dict(exponent_override=2, statistics="ema", tensors="modes", lr=3e-2),
                 final_loss=1e-7, status="ok", seconds_per_step=8.5e-3)]
    return dict(protocol=p, targets=targets, shampoo_grid=grid, shampoo_steps_to_targets=[[5, None, 20][:len(p["horizons"])]],
                compare=dict(steps=600, adam_loss=0.3, adam_lr=1e-2, shampoo_loss=0.15, shampoo_lr=4e-3, loss_ratio=2.0,
                             shampoo_exponent_override=2, shampoo_statistics="ema"),
                adam_seconds_per_step=7e-3, shampoo_seconds_per_step=8.5e-3, time_per_step_ratio=8.5 / 7, timing=timing)


def _synthetic(theirs: bool = True) -> dict:
    p = bench.protocol(quick=True)
    tasks = {task: _task_result(task, tp, theirs and task == "digits-autoencoder") for task, tp in p["tasks"].items()}
    sharded = [dict(model="digits autoencoder", world_size=w, widths=list(SMALL), steps=40, max_preconditioner_dim=64,
                    ranks=[dict(rank=r, blocks=3, statistics_bytes=600 // w, root_bytes=400 // w,
                                preconditioner_bytes=1000 // w, seconds_per_step=0.01, root_seconds_per_step=1e-3,
                                comm_seconds_per_step=2e-3) for r in range(w)],
                    total_bytes=1000, balance=(1000 // w) / (1000 / w) if w < 3 else 1.3, seconds_per_step=0.01,
                    max_abs_diff=0.0) for w in (1, 2, 3)]
    r = dict(quick=True, device="cpu", machine=protocol.machine(), protocol=p, tasks=tasks, sharded=sharded)
    r["goals"] = bench.goals(r)
    return protocol.to_jsonable(r)


def test_report_of_a_synthetic_result(tmp_path):
    r = _synthetic()
    text = bench.report(r)
    assert "Shampoo vs tuned Adam on 3 digits task(s)" in text and "Shampoo steps" in text and "Shampoo s" in text
    for name in ("== digits autoencoder (digits-autoencoder), full batch", "== digits MLP classifier",
                 "== digits CNN (digits-cnn), mini-batches of 256, losses on all the data every 10 steps"):
        assert name in text
    assert "0.003333 (@300)" in text and "0.01 (@100)" in text  # the hardest targets' rows (autoencoder, CNN)
    assert "loss after 600 steps" in text and "Adam/Shampoo = 2.00x" in text
    assert "settings of this task: max_preconditioner_dim 128, skip_preconditioning_rank_lt 2, tensors matrix" in text
    assert "pytorch-optimizer Shampoo" in text and "natgrad / pytorch-optimizer (pytorch_optimizer 4.1.0): 0.89x on the same work" in text
    assert text.count("pytorch-optimizer Shampoo ") == 1  # timed on the autoencoder only
    assert "0.94x with our Adam grafting" in text
    assert "Every Shampoo run (100 steps): steps to the targets above, final loss" in text  # the CNN's quick grid
    assert "-1/2 per factor, ema statistics, kernels per axis" in text and "    5   n/a   1e-07 (ok)" in text
    assert "    5   n/a    20   1e-07 (ok)" in text  # the autoencoder's
    assert ("At the hardest target, 4.12x fewer steps / 1.21x time per step side by side = 3.40x less wall-clock "
            "on an evenly loaded machine (3.50x measured in the grid runs)") in text
    assert "digits autoencoder" in text and "1.300" in text
    verdicts = [g["met"] for g in r["goals"]]
    # per task: steps, wall-clock, time per step (+ same work on the autoencoder); then W = 2, 3 balance
    assert verdicts == [True] * 4 + [True] * 3 + [True] * 3 + [True, False]  # the W = 3 balance of 1.3 misses 1.25
    assert "digits CNN: Shampoo >= 3x fewer steps than tuned Adam at the hardest target: measured 4.12x" in text
    assert "digits autoencoder, W = 3: max per-rank preconditioner bytes <= 1.25 x total / W: measured 1.30x" in text
    assert "MISSED" not in text and "[met" not in text  # figures, not verdicts
    # JSON round trip
    path = tmp_path / "sub" / "shampoo.json"
    bench.save(r, path)
    assert bench.load(path) == json.loads(json.dumps(r)) and bench.report(bench.load(path)) == text
    assert bench.load(tmp_path / "missing.json") is None


def test_report_without_pytorch_optimizer():
    r = _synthetic(theirs=False)
    text = bench.report(r)
    assert "pytorch-optimizer Shampoo" in text and "not installed" in text
    assert r["goals"][3]["met"] is None and "ours / theirs < 1): measured n/a" in text


def test_side_by_side_timer_returns_positive_numbers():
    t = bench.time_per_step(blocks=2, block=2, warmup_blocks=1, widths=SMALL)
    theirs = {"pytorch-optimizer Shampoo", bench.SAME_WORK}
    expected = {"Adam", "natgrad Shampoo"} | (theirs if t["theirs"] != "not installed" else set())
    assert set(t["seconds_per_step"]) == expected
    assert all(s > 0 for s in t["seconds_per_step"].values())
    assert t["ours_vs_adam"] > 0 and (t["ours_vs_theirs"] is None) == (t["theirs"] == "not installed")
    assert (t["same_work_vs_theirs"] is None) == (t["theirs"] == "not installed")


def test_side_by_side_timer_on_the_cnn_with_task_settings():
    """Other tasks: Adam and ours only, on the task's mini-batches, with the settings given."""
    settings = dict(SHAMPOO_CONFIGS["half-power"], **SHAMPOO_TASK_SETTINGS["digits-cnn"])
    t = bench.time_per_step(blocks=1, block=2, warmup_blocks=0, task="digits-cnn", settings=settings, lr=1e-3,
                            adam_lr=2e-3, batch_size=32)
    assert set(t["seconds_per_step"]) == {"Adam", "natgrad Shampoo"} and t["theirs"] == "not timed"
    assert t["settings"] == settings and t["adam_lr"] == 2e-3 and t["batch_size"] == 32
    assert all(math.isfinite(v) for v in t["final_loss"].values())


def test_side_by_side_timer_without_pytorch_optimizer(monkeypatch):
    monkeypatch.setattr(shampoo_timing, "_their_shampoo", lambda: (None, "not installed"))
    t = bench.time_per_step(blocks=1, block=1, warmup_blocks=0, widths=SMALL)
    assert set(t["seconds_per_step"]) == {"Adam", "natgrad Shampoo"}
    assert t["theirs"] == "not installed" and t["ours_vs_theirs"] is None and t["same_work_vs_theirs"] is None


def test_sharded_on_two_ranks_adds_up_to_the_single_process_total():
    s = bench.sharded(2, widths=(64, 32, 64), steps=3, warmup=1, max_preconditioner_dim=16, timeout_s=60)
    assert [o["rank"] for o in s["ranks"]] == [0, 1]
    assert sum(o["preconditioner_bytes"] for o in s["ranks"]) == s["total_bytes"]
    assert s["balance"] == pytest.approx(max(o["preconditioner_bytes"] for o in s["ranks"]) / (s["total_bytes"] / 2))
    assert s["balance"] <= 1.25 and s["seconds_per_step"] > 0
    assert s["max_abs_diff"] < 1e-4  # the all-reduce sums the shard means in another order than the full batch


def test_protocol_grids():
    full, quick = bench.protocol(False), bench.protocol(True)
    assert list(full["tasks"]) == ["digits-autoencoder", "digits-classifier", "digits-cnn"] and full["world_sizes"] == [1, 2, 3]
    for task, p in full["tasks"].items():
        assert len(p["adam_lrs"]) >= 8 and p["shampoo_steps"] == max(p["horizons"])
        assert set(p["shampoo_lrs"]) == set(SHAMPOO_CONFIGS)
        assert p["shampoo_settings"] == SHAMPOO_TASK_SETTINGS.get(task, {})
    ae, cnn = full["tasks"]["digits-autoencoder"], full["tasks"]["digits-cnn"]
    assert min(ae["adam_lrs"]) == pytest.approx(1e-4) and max(ae["adam_lrs"]) == pytest.approx(3e-2)
    assert ae["horizons"] == [500, 2000, 5000] and quick["tasks"]["digits-autoencoder"]["horizons"] == [50, 150, 300]
    assert ae["compare_at"] == 3000 and ae["shampoo_steps"] == 5000 and ae["batch_size"] is None
    assert cnn["batch_size"] == 256 and cnn["eval_every"] == 10


def test_command_line_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "benchmark", lambda quick, device, log: _synthetic())
    out = tmp_path / "s.json"
    assert main(["shampoo", "--quick", "--out", str(out)]) == 0
    assert "Goals:" in capsys.readouterr().out and bench.load(out)["quick"] is True


def test_same_work_configuration_takes_pytorch_optimizers_steps():
    """The "same work" row is a fair comparison only if ours, so configured, is the
    same algorithm as pytorch-optimizer's Shampoo: on a bias-free MLP in float64 both
    take the same 25 steps (theirs moves nothing before its first roots at step 10,
    so ours gets lr 0 until then; roots by eigh vs SVD agree to rounding)."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    from natgrad.optim import Shampoo

    torch.manual_seed(0)
    X = torch.randn(32, 8, dtype=torch.float64)

    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(8, 6, bias=False), torch.nn.Tanh(),
                                   torch.nn.Linear(6, 8, bias=False)).double()

    ours_m, theirs_m = model(), model()
    ours = Shampoo(ours_m.parameters(), lr=0.0, start_preconditioning_step=10, **bench.SAME_WORK_CONFIG)
    theirs = pytorch_optimizer.Shampoo(theirs_m.parameters(), lr=0.05, preconditioning_compute_steps=10, matrix_eps=1e-4)
    for step in range(1, 26):
        ours.param_groups[0]["lr"] = 0.05 if step >= 10 else 0.0
        for m, opt in ((ours_m, ours), (theirs_m, theirs)):
            opt.zero_grad()
            ((m(X) - X) ** 2).mean().backward()
            opt.step()
    moved = max((p - q).abs().max().item() for p, q in zip(theirs_m.parameters(), model().parameters(), strict=True))
    assert moved > 1e-2  # the comparison is not vacuous
    for p, q in zip(ours_m.parameters(), theirs_m.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10)


def _times(x) -> str:
    return "not reached" if x is None else f"{x:.1f}×"


def lesson_rows(r: dict) -> list[str]:
    """The rows of the Shampoo lesson's benchmark table, from a stored result."""
    rows = []
    for task, tr in r["tasks"].items():
        hard = tr["targets"][-1]
        shampoo = "–" if hard["shampoo_steps"] is None else str(hard["shampoo_steps"])
        rows.append(f"| {bench.TASKS[task]} | {hard['target']:.2g} | {hard['adam_steps']} / {shampoo} | "
                    f"{_times(hard['step_ratio'])} | {_times(hard['time_ratio'])} | "
                    f"{tr['timing']['ours_vs_adam']:.2f}× |")
    return rows


def test_stored_results_support_what_the_shampoo_lesson_says():
    """lessons/04-shampoo reports docs/bench/shampoo.json: its table rows are built
    from the stored figures, and its sentences about them hold. Rerunning the
    benchmark must not silently contradict the lesson."""
    r = bench.load(ROOT / "docs" / "bench" / "shampoo.json")
    assert r is not None and not r["quick"] and set(r["tasks"]) == set(bench.TASKS)
    lesson = (ROOT / "lessons" / "04-shampoo" / "lesson.md").read_text()
    for row in lesson_rows(r):
        assert row in lesson
    # "most Shampoo settings ended their 5000 steps well below the best Adam run's loss" (autoencoder)
    ae = r["tasks"]["digits-autoencoder"]
    assert f"most Shampoo settings ended their {ae['protocol']['shampoo_steps']} steps well below" in lesson
    best_adam = min(g["final_loss"] for g in ae["adam_grid"])
    below = [g["final_loss"] < 0.9 * best_adam for g in ae["shampoo_grid"]]
    assert sum(below) > len(below) / 2
    # "the fastest run at every target of every task used -1/2 per factor with EMA statistics"
    assert "at every target of every task" in lesson
    assert all(t["shampoo_exponent_override"] == 2 and t["shampoo_statistics"] == "ema"
               for tr in r["tasks"].values() for t in tr["targets"])
    # the CNN's kernels per axis and as matrices at the same settings
    cnn = r["tasks"]["digits-cnn"]
    (variant,) = [i for i, g in enumerate(cnn["shampoo_grid"]) if g["hparams"].get("tensors") == "modes"]
    lr = cnn["shampoo_grid"][variant]["hparams"]["lr"]
    (same,) = [i for i, g in enumerate(cnn["shampoo_grid"]) if g["hparams"].get("tensors") == "matrix"
               and g["hparams"]["lr"] == lr and g["hparams"]["exponent_override"] == 2]
    steps = [cnn["shampoo_steps_to_targets"][i][-1] for i in (variant, same)]
    assert f"at learning rate {lr:g}, {steps[0]} steps with one factor per axis and {steps[1]} as matrices" in lesson


def test_stored_sharded_runs_support_what_the_distributed_shampoo_lesson_says():
    """lessons/05-distributed-shampoo quotes the stored sharded runs: time per step on 1-3 ranks,
    the largest rank's share of the preconditioner and the difference from one process."""
    r = bench.load(ROOT / "docs" / "bench" / "shampoo.json")
    lesson = (ROOT / "lessons" / "05-distributed-shampoo" / "lesson.md").read_text()
    runs = {(s["model"].split(" 64-")[0], s["world_size"]): s for s in r["sharded"]}
    ae = [runs["digits autoencoder", w] for w in (1, 2, 3)]
    wide = [runs["wide MLP", w] for w in (1, 2, 3)]
    ms = [f"{1e3 * s['seconds_per_step']:.1f}" for s in ae]
    assert f"{ms[0]} ms on 1 rank, {ms[1]} ms on 2 and {ms[2]} ms on 3" in lesson
    ms = [f"{1e3 * s['seconds_per_step']:.1f}" for s in wide]
    assert f"{ms[0]}, {ms[1]} and {ms[2]} ms" in lesson
    assert f"{ae[1]['balance']:.2f}× (2 ranks) and {ae[2]['balance']:.2f}× (3 ranks)" in lesson
    assert f"({ae[0]['total_bytes'] / 1024:.0f} KiB)" in lesson
    assert f"{ae[1]['max_abs_diff']:.1e} on 2 ranks and {ae[2]['max_abs_diff']:.1e} on 3" in lesson
    assert ae[0]["max_abs_diff"] == 0 and all(0 < s["max_abs_diff"] < 1e-3 for s in ae[1:] + wide[1:])
    # "time per step does not fall as ranks are added" on this machine's cores
    assert all(s["cpus"] <= 2 for s in ae) and ae[2]["seconds_per_step"] > ae[0]["seconds_per_step"]
