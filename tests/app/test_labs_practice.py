"""Lesson 8's labs driven through AppTest: the optimizer race, the preconditioner lab and
the Muon check, with what they show checked against independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from course.lessons import load_lessons
from course.progress import ENV_VAR
from natgrad.curvature import exact_fisher
from natgrad.snapshots import pooled_digits, small_classifier
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors
from tests.app.helpers import open_page, start, submit


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def _table(at, column):
    tables = [df.value for df in at.table if column in df.value.columns]
    assert len(tables) == 1, f"{len(tables)} tables with a column {column!r}"
    return tables[0]


def _chart(at, key):
    charts = [c for c in at.get("plotly_chart") if key in c.proto.id]
    assert charts, f"no chart {key}"
    return json.loads(charts[0].proto.spec)


def _no_lab_errors(at):
    assert not at.exception, at.exception
    assert not [e.value for e in at.error if "lab stopped" in e.value]


def test_race_runs_the_chosen_optimizers_side_by_side():
    at = open_page(start(), "practice")
    at.multiselect(key="race-opts-digits-autoencoder").set_value(["adam", "soap", "muon"]).run()
    at.select_slider(key="race-steps").set_value(25)
    at = submit(at, "race")
    _no_lab_errors(at)
    table = _table(at, "ms per step")
    assert list(table["optimizer"]) == ["Adam", "SOAP", "Muon"]
    # Adam at its preset lr 1e-3 from the same initial weights, by hand
    X, _ = load_digits_tensors()
    model = digits_autoencoder(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(25):
        opt.zero_grad()
        loss = autoencoder_loss(model(X), X)
        loss.backward()
        opt.step()
    final = dict(zip(table["optimizer"], table["final loss"], strict=True))
    assert float(final["Adam"]) == pytest.approx(loss.item(), rel=1e-3)
    spec = _chart(at, "race-fig")
    assert len(spec["data"]) == 6  # every run against steps and against seconds
    assert spec["layout"]["yaxis2"]["matches"] == "y"  # the loss axes are linked ...
    assert spec["layout"]["yaxis"]["type"] == spec["layout"]["yaxis2"]["type"] == "log"  # ... which needs one type
    assert list(table["step cost / Adam's"])[0] == "1.00x"


def test_race_offers_only_the_optimizers_that_apply():
    at = open_page(start(), "practice")
    at.selectbox(key="race-task").set_value("kron-quadratic").run()
    _no_lab_errors(at)
    options = at.multiselect(key="race-opts-kron-quadratic").options
    assert "K-FAC" not in options and "Adam" in options
    assert any("K-FAC" in c.value and "likelihood" in c.value for c in at.caption)


def test_preconditioner_lab_against_the_exact_natural_gradient():
    at = open_page(start(), "practice")
    at.select_slider(key="pc-step").set_value(0)
    at.select_slider(key="pc-lam").set_value(1e-2)
    at = submit(at, "pc")
    _no_lab_errors(at)
    table = _table(at, "condition number")
    rows = {r["method"]: r for r in table.to_dict("records")}
    assert {"natural gradient", "SGD", "Adam / RMSprop", "diagonal Fisher", "Sophia", "K-FAC", "Shampoo -1/4",
            "Shampoo -1/2", "SOAP", "Muon"} == set(rows)
    assert rows["natural gradient"]["cosine"] == "1.0000" and float(rows["natural gradient"]["condition number"]) == 1
    # SGD's cosine at the untrained model, from the Fisher and the gradient directly
    X, y = pooled_digits()
    model = small_classifier(0)
    F = exact_fisher(model, X[:512], y[:512], likelihood="softmax") + 1e-2 * torch.eye(444, dtype=torch.float64)
    g = torch.cat([p.reshape(-1) for p in torch.autograd.grad(
        torch.nn.functional.cross_entropy(model(X[:512]), y[:512]), list(model.parameters()))])
    ng = torch.linalg.solve(F, g)
    assert float(rows["SGD"]["cosine"]) == pytest.approx(float(g @ ng / (g.norm() * ng.norm())), abs=1e-4)
    assert float(rows["SGD"]["condition number"]) == pytest.approx(float(torch.linalg.cond(F)), rel=1e-2)
    train = _chart(at, "pc-fig-train")
    assert len({t["name"] for t in train["data"] if t.get("showlegend")}) == 10  # a line per method
    assert all(math.isfinite(float(r["cosine"])) for r in rows.values())


def test_muon_check_lab_agrees_to_1e6():
    at = open_page(start(), "practice")
    at = submit(at, "mc")
    _no_lab_errors(at)
    metric = next(m for m in at.metric if m.label == "max |Shampoo step − UVᵀ|")
    assert float(metric.value) < 1e-6


def test_lessons_1_2_4_6_link_to_the_preconditioner_lab():
    lessons = {x.order: x for x in load_lessons()}
    practice = next(x for x in lessons.values() if any(lab.id == "preconditioner-lab" for lab in x.labs))
    for order in (1, 2, 4, 6):
        assert f"]({practice.slug}#science-lab-" in "".join(s.text or "" for s in lessons[order].segments())


def test_every_race_task_has_a_name_and_racers_chosen_at_the_start():
    # (five tasks showed their ids, and on the manifold tasks no optimizer was chosen: "Race" only said
    # "Choose at least one optimizer")
    from natgrad.experiments import TASKS
    from views.labs.race import TASK_NAMES

    assert set(TASK_NAMES) == set(TASKS)
    at = open_page(start(), "practice")
    for task in TASKS:
        at.selectbox(key="race-task").set_value(task).run()
        _no_lab_errors(at)
        assert at.multiselect(key=f"race-opts-{task}").value, task
