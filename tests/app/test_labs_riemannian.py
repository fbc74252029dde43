"""The Riemannian lesson's labs, driven through AppTest like a learner would, with the numbers they show
checked against independent computations (closed forms, numpy, the stored benchmark, separate runs)."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from course.lessons import load_lessons
from course.progress import ENV_VAR
from natgrad.bench import simplex as simplex_bench
from natgrad.experiments import Spec, run
from natgrad.tasks.manifolds import digits_covariance
from tests.app.helpers import open_page, run_lab, start, texts
from tests.conftest import ROOT
from views.labs import LABS

LESSON = next(x for x in load_lessons() if x.slug == "riemannian")


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def _chart(at, key):
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith("-" + key)]
    assert len(charts) == 1, f"{len(charts)} charts {key}"
    return json.loads(charts[0].proto.spec)


def _chart_keys(at) -> list[str]:
    return [c.proto.id for c in at.get("plotly_chart")]


def _values(v) -> list:
    """A plotly data array from its JSON: a list, or a typed array {"dtype", "bdata"} (base64)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def _table(at, column):
    tables = [df.value for df in at.table if column in df.value.columns]
    assert len(tables) == 1
    return tables[0]


def _lab_errors(at):
    return [e.value for e in at.error if "lab stopped" in e.value]


def test_lesson_has_every_lab_and_the_adam_question_points_to_the_embedding_lab():
    assert {lab.id for lab in LESSON.labs} <= set(LABS)
    question = next(q for q in LESSON.questions if q.id == "adam-hyperbolic")
    lab = next(lab for lab in LESSON.labs if lab.id == "hyperbolic-embedding")
    assert lab.title in question.prompt and lab.title in question.explanation
    assert any("Bonnabel" in s.cite and "1111.5280" in s.cite for s in LESSON.sources)


def test_retraction_lab_sphere_and_simplex():
    at = open_page(start(), "riemannian")
    assert not at.exception and not _lab_errors(at)
    # the simplex tab opens first and only the open tab is drawn (the sphere is a WebGL figure)
    assert "exponential map" not in {m.label for m in at.metric} and not any(k.endswith("-rx-sphere") for k in _chart_keys(at))
    at.session_state["rx-tab"] = "unit sphere (= Stiefel St(3, 1))"
    at = at.run()
    assert not at.exception and not _lab_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    # defaults: tilt 20 degrees, |d| = 1.5: the tangent part has length 1.5 cos(20 deg)
    n = 1.5 * math.cos(math.radians(20))
    assert float(metrics["exponential map"].split()[0]) == pytest.approx(n, abs=1e-3)
    assert float(metrics["projection (x+v)/|x+v|"].split()[0]) == pytest.approx(math.atan(n), abs=1e-3)
    assert metrics["QR (Stiefel, k = 1)"] == metrics["projection (x+v)/|x+v|"]
    assert float(metrics["Cayley (Stiefel, k = 1)"].split()[0]) == pytest.approx(2 * math.atan(n / 2), abs=1e-3)
    sphere = _chart(at, "rx-sphere")
    assert sphere["data"][0]["type"] == "surface" and any(t.get("type") == "scatter3d" for t in sphere["data"])
    at.slider(key="rx-len").set_value(3.0)
    at.slider(key="rx-tilt").set_value(0)
    at = at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["exponential map"].split()[0]) == pytest.approx(3.0, abs=1e-3)
    assert float(metrics["projection (x+v)/|x+v|"].split()[0]) == pytest.approx(math.atan(3.0), abs=1e-3)
    at.session_state["rx-tab"] = "probability simplex (Fisher-Rao)"
    at = at.run()
    body = texts(at)
    assert "Fisher-Rao length" in body and "stays inside for the whole step" in body
    at.slider(key="rs-angle").set_value(250)
    at = at.run()
    assert "reaches a face" in texts(at) and "has $p_{3} < 0$" in texts(at)
    # an impossible point is refused in words
    at.slider(key="rs-p1").set_value(0.7)
    at.slider(key="rs-p2").set_value(0.3)
    at = at.run()
    assert not at.exception and any("p3" in w.value for w in at.warning)


def test_stiefel_lab_four_runs():
    at = run_lab("riemannian", "st", {"st-steps": 50, "st-k": 2})
    assert not _lab_errors(at)
    table = _table(at, "final max |QᵀQ − I|")
    rows = {r["run"]: r for r in table.to_dict("records")}
    assert len(rows) == 4
    best = float(np.linalg.eigvalsh(digits_covariance().numpy())[-2:].sum())
    for label in ("Riemannian SGD", "Riemannian Adam", "projected Adam (Adam, then re-orthonormalise)"):
        assert float(rows[label]["final max |QᵀQ − I|"]) < 1e-5
        assert float(rows[label]["final tr(QᵀCQ)"]) <= best + 1e-4
    plain = rows["Adam (plain, ignores QᵀQ = I)"]
    assert float(plain["final max |QᵀQ − I|"]) > 0.1 and float(plain["final tr(QᵀCQ)"]) > best
    # the Riemannian SGD number is the same run made outside the app
    t = run(Spec.make({"lr": 0.5}, {"k": 2, "retraction": "qr"}, task="stiefel-pca", optimizer="riemannian-sgd", steps=50))
    assert float(rows["Riemannian SGD"]["final tr(QᵀCQ)"]) == pytest.approx(t.extras["objective"][-1], rel=1e-4)
    assert rows["Riemannian SGD"]["first step within 0.1% of the best, orthonormal"] != "not reached"
    fig = _chart(at, "st-fig")
    assert len([d for d in fig["data"] if d.get("showlegend", True) is not False]) == 4
    assert f"{best:.4f}" in texts(at)


def test_simplex_lab_paths_losses_and_stored_ratio():
    at = run_lab("riemannian", "kl", {"kl-steps": 20, "kl-nglr": 1.0})
    assert not _lab_errors(at)
    tern = _chart(at, "kl-ternary")
    paths = [d for d in tern["data"] if d["name"] in ("natural gradient", "projected GD")]
    assert [len(_values(d["a"])) for d in paths] == [21, 21]  # the start and the point after each of the 20 steps
    ng = next(d for d in paths if d["name"] == "natural gradient")
    last = [_values(ng[axis])[-1] for axis in ("b", "c", "a")]  # p1, p2, p3
    assert last == pytest.approx([0.7, 0.2, 0.1], abs=1e-6)
    metrics = {m.label: m for m in at.metric}
    assert "not reached" not in metrics["natural gradient"].delta
    # the lab text quotes the stored benchmark's figures
    r = simplex_bench.load(ROOT / "docs" / "bench" / "simplex.json")
    body = texts(at)
    assert f"{r['min_ratio']:.1f}x" in body and f"{r['median_ratio']:.1f}x" in body
    at.slider(key="kl-q1").set_value(0.8)
    at.slider(key="kl-q2").set_value(0.2)
    from tests.app.helpers import submit
    at = submit(at, "kl")
    assert not at.exception and any("leaves nothing for q3" in w.value for w in at.warning)


def test_embedding_lab_shows_riemannian_adam_and_plain_adams_failure():
    at = run_lab("riemannian", "pe", {"pe-steps": 100})
    assert not _lab_errors(at)
    rows = {r["run"]: r for r in _table(at, "mean rank (1 is perfect)").to_dict("records")}
    assert float(rows["Riemannian Adam"]["largest norm"]) < 1
    assert rows["Adam (plain)"]["mean rank (1 is perfect)"] == "undefined"
    plain = run(Spec.make({"lr": 0.01, "on_manifold": "warn"}, {"tree": "taxonomy"}, task="poincare-tree",
                          optimizer="adam", steps=100, dtype="float64"))
    left = next(i for i, v in enumerate(plain.extras["max norm"]) if v >= 1)
    stories = [e.value for e in at.warning if "out of the disk" in e.value]
    assert not at.error  # the run that leaves the disk is the lesson, not a fault: a warning, as report_status says it
    assert len(stories) == 1 and f"The update of step {left} moved" in stories[0]
    assert f"Diverged at step {left + 1}" in stories[0] and int(rows["Adam (plain)"]["steps run"]) == left + 2
    disk = _chart(at, "pe-disk-riemannian")
    assert len(disk["frames"]) >= 10 and disk["layout"]["sliders"][0]["steps"][-1]["label"] == "99"
    nodes = next(d for d in disk["data"] if d["name"] == "nodes")
    assert len(_values(nodes["x"])) == 40
