"""The labs of lessons 1 (Adam's v_t next to the diagonal Fisher) and 6 (Sophia's clipping),
driven through AppTest like a learner would, with the numbers they show checked against
independent computations."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from course.progress import ENV_VAR
from natgrad.tasks.chars import chars_task
from natgrad.tasks.digits import digits_classifier, load_digits_tensors
from tests.app.helpers import run_lab


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))


def _lab_errors(at):
    return [e.value for e in at.error if "lab stopped" in e.value]


def _metrics(at):
    return {m.label: m for m in at.metric}


def _table(at, column):
    tables = [df.value for df in at.table if column in df.value.columns]
    assert len(tables) == 1, f"{len(tables)} tables with a column {column!r}"
    return tables[0]


def _chart(at, key):
    charts = [c for c in at.get("plotly_chart") if key in c.proto.id]
    assert charts, f"no chart {key}"
    return json.loads(charts[0].proto.spec)


def _array(values) -> np.ndarray:
    """A plotly data array as JSON holds it: a list, or base64 with dtype (and shape)."""
    if isinstance(values, dict) and "bdata" in values:
        a = np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
        return a.reshape([int(n) for n in str(values["shape"]).split(",")]) if "shape" in values else a
    return np.asarray(values, dtype=float)


def test_adam_fisher_lab_trains_adam_on_the_batches_it_says():
    """10 Adam steps on mini-batches of 64 digits: the loss it reports is that of a plain
    torch loop drawing the same batches; the scatter has one point per parameter per panel."""
    at = run_lab("adam-diagonal-fisher", "af", {"af-step": 10, "af-batch": 64, "af-lr": 1e-2})
    assert not _lab_errors(at)
    X, y = load_digits_tensors(dtype=torch.float64)
    model = digits_classifier(seed=0).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        idx = torch.randint(0, 1797, (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(model(X), y))
    m = _metrics(at)
    assert float(m["loss on all digits"].value) == pytest.approx(loss, rel=1e-3)
    assert m["1 / B"].value == "0.0156"
    spec = _chart(at, "af-scatter")
    points = sum(len(_array(t["x"])) for t in spec["data"] if t.get("mode") == "markers")
    assert points == 2 * 2410  # every parameter, in both panels
    assert "log-log correlation" in spec["layout"]["annotations"][0]["text"]
    # the output layer's Fisher is drawn in its own tab, only when that tab is open
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-af-layer")]
    at.session_state["af-view"] = "the output layer's full Fisher"
    at = at.run()
    assert not _lab_errors(at)
    layer = _chart(at, "af-layer")
    # one pixel per entry of the output layer's block: 10 x 32 weights + 10 biases
    png = base64.b64decode(layer["data"][0]["source"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == (330, 330)


def test_power_paths_follow_the_closed_form():
    """Uncorrelated inputs: with power -1 every coordinate contracts by (1 - lr) per step, so the
    loss after t steps is (1 - lr)^(2t) times the start's."""
    at = run_lab("adam-diagonal-fisher", "pw", {"pw-scale": 0.3, "pw-corr": 0.0, "pw-lr": 0.3, "pw-steps": 20})
    assert not _lab_errors(at)
    rows = {r["path"]: r for r in _table(at, "final loss").to_dict("records")}
    w0, w_star, s = torch.tensor([-2.0, 2.5]), torch.tensor([1.0, -0.5]), 0.3
    start_loss = 0.5 * float((w0[0] - w_star[0]) ** 2 + s**2 * (w0[1] - w_star[1]) ** 2)
    minus_one = next(r for k, r in rows.items() if k.startswith("power −1 "))
    assert float(minus_one["final loss"]) == pytest.approx(start_loss * 0.7**40, rel=1e-2)
    # -1/2: coordinate i contracts by (1 - lr * s_i), s = (1, 0.3)
    half = next(r for k, r in rows.items() if k.startswith("power −1/2"))
    expected = 0.5 * float((0.7**20 * 3.0) ** 2 + s**2 * ((1 - 0.3 * s) ** 20 * 3.0) ** 2)
    assert float(half["final loss"]) == pytest.approx(expected, rel=1e-2)
    assert all(r["status"] == "ok" for r in rows.values())


def test_sophia_toy_lab_newton_stops_at_the_saddle():
    """Newton's method from the concave region converges to (0, 4), where f = 8 exactly;
    Sophia and Adam go downhill to the minimum at (1, 4)."""
    at = run_lab("sophia", "sc", {"sc-gamma": 1.0, "sc-lr": 0.05, "sc-k": 10, "sc-steps": 100})
    assert not _lab_errors(at)
    m = _metrics(at)
    assert m["Newton"].value == "f = 8"
    assert "(0.00, 4.00)" in m["Newton"].delta
    assert float(m["Sophia"].value.removeprefix("f = ")) < 0.05
    # the curvature along theta_1 at the start (0.2, 0), by hand: 8 (x - 1)^2 (1.3 x^2 + 2 x + 1)
    # = 8 (1.3 x^4 - 0.6 x^3 - 1.7 x^2 + 1), so f_xx = 8 (15.6 x^2 - 3.6 x - 3.4)
    x = 0.2
    fxx = 8 * (15.6 * x**2 - 3.6 * x - 3.4)
    assert fxx == pytest.approx(-27.968)
    assert any(f"{fxx:.1f}" in c.value for c in at.caption)
    assert len(_chart(at, "sc-fig")["data"]) >= 7  # contour, 3 paths with end markers, the start


def test_sophia_char_lab_trains_four_optimizers_and_samples_text():
    at = run_lab("sophia", "sx", {"sx-steps": 50, "sx-adam": 3e-3})
    assert not _lab_errors(at)
    # the toy part above the character model has its own "Adam" metric: the last four are this part's
    labels = [m.label for m in at.metric][-4:]
    assert labels == ["Sophia-G", "Sophia-H", "AdamW", "Adam"]
    # Adam, by hand on the same mini-batches of 16 sequences
    task = chars_task(seed=0)
    opt = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        x, y = task.batch(16, gen)
        opt.zero_grad()
        loss = task.loss(x, y)
        loss.backward()
        opt.step()
    assert float(at.metric[-1].value) == pytest.approx(loss.item(), rel=1e-3)
    clipped = _chart(at, "sx-clipped")
    assert [t["name"] for t in clipped["data"]] == ["Sophia-G", "Sophia-H"]
    assert all(0 <= v <= 1 for t in clipped["data"] for v in _array(t["y"]))
    samples = [c.value for c in at.code if c.value.startswith("The Fisher ")]
    assert len(samples) == 4 and all(len(s) == len("The Fisher ") + 200 for s in samples)
