"""The Shampoo and Distributed Shampoo labs, driven through AppTest like a learner would,
with the numbers they show checked against independent computations."""

from __future__ import annotations

import json

import pytest
import torch

from course.progress import ENV_VAR
from natgrad import costs
from natgrad.sharding import ShardingConfig
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors
from natgrad.tasks.quadratic import kron_quadratic
from tests.app.helpers import open_page, run_lab, start
from tests.natgrad.test_sharding import expected_bytes
from views.labs import sharding as sharding_lab


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def _table(at, column):
    """The one table with this column (AppTest's tables carry no key)."""
    tables = [df.value for df in at.table if column in df.value.columns]
    assert len(tables) == 1, f"{len(tables)} tables with a column {column!r}"
    return tables[0]


def _lab_errors(at):
    return [e.value for e in at.error if "lab stopped" in e.value]


def _adam_losses(loss_fn, params, lr, steps):
    opt = torch.optim.Adam(params, lr=lr)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def test_why_quarter_lab_trains_four_runs_on_both_tasks():
    at = run_lab("shampoo", "wq", {"wq-steps": 50, "wq-p": 8, "wq-skew": 100})
    assert not _lab_errors(at)
    table = _table(at, "quadratic: final loss")
    assert list(table["run"]) == ["exponent -1/8 (your choice)", "exponent -1/4", "exponent -1/2", "Adam"]
    for key in ("wq-fig-digits", "wq-fig-quad"):
        chart = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id]
        assert chart and len(json.loads(chart[0].proto.spec)["data"]) == 4
    row = dict(zip(table["run"], table["quadratic: final loss"], strict=True))
    # Adam on the quadratic, by hand from the closed form f = 1/2 tr(E^T A E B)
    q = kron_quadratic(m=16, n=16, cond_left=100.0, cond_right=100.0)
    W = torch.nn.Parameter(torch.zeros(16, 16))

    def f():
        E = W - q.w_star
        return 0.5 * torch.trace(E.T @ q.left @ E @ q.right)

    assert float(row["Adam"]) == pytest.approx(_adam_losses(f, [W], 0.3, 50)[-1], rel=1e-3)
    # the caption's condition number is kappa_A * kappa_B, computed
    assert any("condition number 10,000 " in c.value for c in at.caption)


def test_why_quarter_lab_does_not_repeat_a_marked_exponent():
    at = run_lab("shampoo", "wq", {"wq-steps": 50, "wq-p": 4})
    assert list(_table(at, "quadratic: final loss")["run"]) == ["exponent -1/4", "exponent -1/2", "Adam"]


def test_shampoo_vs_kfac_lab_shares_axes_and_reports_divergence():
    at = run_lab("shampoo", "sk", {"sk-steps": 50, "sk-slr": 10.0})  # Shampoo with lr 10 diverges
    assert not _lab_errors(at)
    labels = [m.label for m in at.metric if m.label in ("Shampoo", "K-FAC", "Adam")]
    assert labels == ["Shampoo", "K-FAC", "Adam"]
    assert any("Shampoo" in w.value and "Diverged at step" in w.value for w in at.warning)
    X, _ = load_digits_tensors()
    model = digits_autoencoder(seed=0)
    adam = _adam_losses(lambda: autoencoder_loss(model(X), X), model.parameters(), 1e-2, 50)  # the default lr
    metric = next(m for m in at.metric if m.label == "Adam")
    assert float(metric.value) == pytest.approx(adam[-1], rel=1e-3)
    table = _table(at, "step reaching Adam's final loss")
    assert list(table["optimizer"]) == ["Shampoo", "K-FAC", "Adam"]
    assert float(dict(zip(table["optimizer"], table["final loss"], strict=True))["Adam"]) == float(metric.value)


def test_memory_lab_computes_the_32000_factor_and_per_gpu_share():
    at = open_page(start(), "shampoo")
    assert not at.exception
    table = _table(at, "layout")
    rows = {(r["layout"], r["matrix"]): r for r in table.to_dict("records")}
    L = rows[("unblocked", "L (statistic)")]
    assert L["bytes"] == 4_096_000_000 == 32000 * 32000 * 4 and L["memory"] == "4.1 GB"
    assert rows[("unblocked", "inverse root of L")]["bytes"] == 4_096_000_000
    assert rows[("unblocked", "R (statistic)")]["bytes"] == 4096 * 4096 * 4
    # blocks of 1024: 32 x 4 = 128 blocks; L sums 31 full 1024-row pieces and one of 256 rows, per column block
    blocked_total = rows[("blocks of 1024", "total")]
    assert blocked_total["blocks"] == 128
    assert blocked_total["bytes"] == 2 * 4 * (4 * (31 * 1024**2 + 256**2) + 128 * 1024**2)
    metrics = {m.label: m.value for m in at.metric}
    # 124 equal 1024x1024 blocks and 4 equal 256x1024 ones spread over 4 GPUs: a quarter each
    assert metrics["largest per-GPU share, blocks of 1024"] == costs.human_bytes(blocked_total["bytes"] / 4)
    assert metrics["largest per-GPU share, unblocked"] == "8.33 GB"  # one block: one GPU holds it all

    at.selectbox(key="sm-dtype").set_value("bfloat16")
    at.number_input(key="sm-m").set_value(1_000_000)
    at.number_input(key="sm-n").set_value(1_000_000)
    at.select_slider(key="sm-block").set_value(128)
    at = at.run()
    assert not at.exception
    rows = {(r["layout"], r["matrix"]): r for r in _table(at, "layout").to_dict("records")}
    assert rows[("unblocked", "L (statistic)")]["bytes"] == 2 * 10**12
    assert any("too many to hand out" in w.value for w in at.warning)


def test_sharding_lab_launches_two_real_ranks(monkeypatch):
    at = run_lab("distributed-shampoo", "sh", {"sh-ranks": 2, "sh-steps": 10})
    assert not _lab_errors(at) and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["max |sharded − single process|"]) < 1e-3
    table = _table(at, "share of single process")
    assert list(table["rank"]) == [0, 1]
    assert int(table["bytes"].sum()) == expected_bytes(ShardingConfig(world_size=2, steps=10))
    assert all(b > 0 for b in table["bytes"])
    assert len([c for c in at.get("plotly_chart")]) >= 2

    # moving an unrelated widget must not relaunch: the result comes from the cache
    def no_launch(*args, **kwargs):
        raise AssertionError("relaunched")

    monkeypatch.setattr(sharding_lab, "run_sharded", no_launch)
    at.select_slider(key="sh-steps").set_value(50)  # changed but not submitted
    at = at.run()
    assert not at.exception and not _lab_errors(at)
    assert list(_table(at, "share of single process")["rank"]) == [0, 1]


def test_sharding_lab_names_a_failed_rank_in_words():
    # the rank to break stays at its default, 1 (the slider is off until a fault is chosen)
    at = run_lab("distributed-shampoo", "sh", {"sh-ranks": 2, "sh-steps": 10}, {"sh-fault": "raise"})
    assert not _lab_errors(at)
    errors = [e.value for e in at.error]
    assert any("rank 1 failed" in e and "injected failure on rank 1" in e for e in errors), errors


def _stored_results_app(bench_dir: str) -> None:
    from pathlib import Path

    import views.labs.common as common
    from natgrad.bench import shampoo

    common.BENCH_DIR = Path(bench_dir)
    common.bench_results("shampoo", "Shampoo vs tuned Adam", shampoo.report)


def test_stored_results_of_an_older_format_are_explained_not_crashed_on(tmp_path):
    """A docs/bench/shampoo.json written before the three-task protocol (no "tasks")."""
    from streamlit.testing.v1 import AppTest

    (tmp_path / "shampoo.json").write_text(json.dumps({"quick": False, "targets": [], "curves": {}}))
    at = AppTest.from_function(_stored_results_app, args=(str(tmp_path),))
    at.session_state["bench-shampoo-open"] = True  # the expander opened
    at = at.run()
    assert not at.exception
    [warning] = at.warning
    assert "do not fit this version of the benchmark" in warning.value
    assert "python -m natgrad.bench shampoo --out docs/bench/shampoo.json" in warning.value
