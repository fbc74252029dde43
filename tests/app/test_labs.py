"""The K-FAC and damping labs, driven through AppTest like a learner would."""

from __future__ import annotations

import pytest

from course.progress import ENV_VAR
from natgrad import costs
from tests.app.helpers import open_page, start, submit


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def _charts(at):
    return at.get("plotly_chart")


def test_fisher_blocks_lab_follows_the_step_slider():
    at = open_page(start(), "kfac")
    assert not at.exception
    before = {m.label: m.value for m in at.metric}
    at.select_slider(key="fb-step").set_value(0)
    at = at.run()
    after = {m.label: m.value for m in at.metric}
    assert not at.exception
    assert before["training loss"] != after["training loss"]
    assert float(after["training loss"]) == pytest.approx(2.32, abs=0.05)  # ~ln(10) before training


def test_cost_lab_numbers_are_computed():
    at = open_page(start(), "kfac")
    at.number_input(key="kc-m").set_value(4096)
    at.number_input(key="kc-n").set_value(4095)  # with the bias: A is 4096 x 4096
    at = at.run()
    table = [df for df in at.table if "memory" in df.value.columns][0].value
    row = dict(zip(table["name"], table["memory"], strict=True))
    _, kfac, _ = costs.layer_costs(4096, 4095)
    assert row["K-FAC (A and G)"] == costs.human_bytes(kfac.bytes) == "134 MB"
    assert row["exact Fisher block"] == "1.13 PB"


def test_training_lab_trains_three_optimizers_and_reports_divergence():
    at = open_page(start(), "kfac")
    at.select_slider(key="kt-steps").set_value(50)
    at.select_slider(key="kt-slr").set_value(10.0)  # SGD with lr 10 diverges
    at = submit(at, "kt")
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric if m.label in ("K-FAC", "Adam", "SGD+momentum")]
    assert labels == ["K-FAC", "Adam", "SGD+momentum"]
    warnings = [w.value for w in at.warning]
    assert any("SGD+momentum" in w and "Diverged at step" in w for w in warnings)
    assert len(_charts(at)) >= 4  # fisher blocks + 2 loss tabs + traces
    assert not [e for e in at.error if "lab stopped" in e.value]


def test_damping_lab_shows_damping_and_rho():
    at = open_page(start(), "damping")
    at.select_slider(key="dl-steps").set_value(50)
    at = submit(at, "dl")
    assert not at.exception
    assert any("reduction ratio" in m.value for m in at.markdown)
    assert not [e for e in at.error if "lab stopped" in e.value]


@pytest.mark.parametrize(("slug", "names"), [("kfac", ["kfac"]), ("shampoo", ["shampoo", "kfac"])])
def test_lessons_show_the_stored_benchmarks(slug, names):
    """The lesson prints the committed benchmark results exactly as the command line does."""
    from natgrad.bench import kfac as kfac_bench
    from natgrad.bench import shampoo as shampoo_bench
    from natgrad.bench.protocol import load
    from views.labs.common import BENCH_DIR

    at = open_page(start(), slug)
    assert not at.exception
    assert not at.code  # drawn only once its expander is opened
    for name in names:
        at.session_state[f"bench-{name}-open"] = True
    at = at.run()
    shown = [c.value for c in at.code]
    for name in names:
        result = load(BENCH_DIR / f"{name}.json")
        assert result is not None, f"docs/bench/{name}.json is missing"
        assert {"kfac": kfac_bench, "shampoo": shampoo_bench}[name].report(result) in shown


def _figure_names(at) -> list[str]:
    import json

    names = []
    for chart in _charts(at):
        spec = json.loads(chart.proto.spec)
        names += [t.get("name", "") for t in spec.get("data", [])]
    return names


def test_training_lab_trains_the_chosen_task():
    at = open_page(start(), "kfac")
    at.radio(key="kt-task").set_value("digits-classifier")
    at.select_slider(key="kt-steps").set_value(50)
    at = submit(at, "kt")
    assert not at.exception, at.exception
    assert [m.label for m in at.metric if m.label in ("K-FAC", "Adam", "SGD+momentum")] == ["K-FAC", "Adam",
                                                                                          "SGD+momentum"]
    k = float([m.value for m in at.metric if m.label == "K-FAC"][0])
    assert k < 0.5  # cross-entropy of the digits classifier (ln 10 = 2.3 at the start), not the autoencoder's loss
    assert any("bound hits" in m.value for m in at.markdown)


def test_damping_lab_marks_rejected_steps_and_bound_hits_on_the_cnn():
    """A fixed learning rate of 10 on the CNN overshoots: the lab shows the rejected steps on
    the damping and rho traces, and says how many there were."""
    at = open_page(start(), "damping")
    at.radio(key="dl-rule").set_value("fixed")  # outside the form: takes effect at once
    at = at.run()  # the fixed rule switches the learning-rate slider on
    assert not at.select_slider(key="dl-klr").disabled
    # the form's widgets are set after that rerun: a rerun without the form's button drops them
    at.radio(key="dl-task").set_value("digits-cnn")
    at.select_slider(key="dl-steps").set_value(50)
    at.select_slider(key="dl-klr").set_value(10.0)
    at = submit(at, "dl")
    assert not at.exception, at.exception
    counts = [m.value for m in at.markdown if "rejected steps" in m.value]
    assert counts and " 0 rejected" not in counts[0]
    assert any(n.startswith("rejected step") for n in _figure_names(at))
    assert any("mini-batches of 256" in c.value.lower() or "batch" in c.value for c in at.caption)


def test_cost_lab_shows_the_per_layer_cost_of_the_chosen_model():
    at = open_page(start(), "kfac")
    at.radio(key="kc-task").set_value("digits-cnn")
    at = at.run()
    assert not at.exception, at.exception
    table = [df for df in at.table if "A / G inverted by" in df.value.columns][0].value
    assert list(table["A"]) == [10, 145, 2049] and list(table["A / G inverted by"])[-1] == "woodbury / eigh"
    # the second convolution's statistics (16384 rows of 145) now outweigh the head, whose 2049-wide
    # factor is kept low-rank (tests/natgrad/test_costs.py counts both by hand)
    assert any("most expensive layer is 3 (Conv2d)" in c.value for c in at.caption)
