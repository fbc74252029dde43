"""Lesson 8's section on the course's own benchmarks quotes the stored results
(docs/bench/*.json); each figure it prints is recomputed here from those files."""

from __future__ import annotations

from pathlib import Path

from natgrad.bench import protocol

ROOT = Path(__file__).resolve().parents[3]
LESSON = (ROOT / "lessons" / "08-practice" / "lesson.md").read_text()
SECTION = LESSON.split("## What this course's own benchmarks show", 1)[1].split("\n## ", 1)[0]


def _load(name: str) -> dict:
    return protocol.load(ROOT / "docs" / "bench" / f"{name}.json")


def test_the_section_sits_before_what_came_after():
    assert LESSON.index("## What this course's own benchmarks show") < LESSON.index("## What came after")


def test_kfac_autoencoder_figures():
    r = _load("kfac")
    tasks = r.get("tasks", {"digits-autoencoder": r})
    hard = tasks["digits-autoencoder"]["targets"][-1]
    per_step = tasks["digits-autoencoder"]["time_per_step_ratio"]
    assert (f"in {hard['kfac_steps']} steps against Adam's {hard['adam_steps']} ({hard['step_ratio']:.1f}x fewer)"
            in SECTION)
    assert (f"in {hard['kfac_seconds']:.1f} s against {hard['adam_seconds']:.1f} s ({hard['time_ratio']:.1f}x less "
            "wall-clock)" in SECTION)
    assert f"each K-FAC step cost {per_step:.2f}x an Adam step" in SECTION


def test_kfac_classifier_and_cnn_figures():
    tasks = _load("kfac")["tasks"]
    mlp, cnn = tasks["digits-classifier"], tasks["digits-cnn"]
    hard = mlp["targets"][-1]
    assert f"it needed {hard['step_ratio']:.1f}x fewer steps and {hard['time_ratio']:.1f}x less time" in SECTION
    hard, easy = cnn["targets"][-1], cnn["targets"][0]
    assert f"K-FAC still needed {hard['step_ratio']:.1f}x fewer steps" in SECTION
    assert f"each step cost {cnn['time_per_step_ratio']:.2f}x an Adam step" in SECTION
    assert f"saved only {hard['time_ratio']:.1f}x in time" in SECTION
    assert easy["time_ratio"] < 1 and f"about {1 / easy['time_ratio']:.0f}x longer than Adam" in SECTION


def test_the_kfac_lesson_quotes_the_three_tasks():
    lesson = (ROOT / "lessons" / "02-kfac" / "lesson.md").read_text()
    r = _load("kfac")
    ae, mlp, cnn = (r["tasks"][t] for t in ("digits-autoencoder", "digits-classifier", "digits-cnn"))
    (grid,) = {len(t["protocol"]["adam_lrs"]) for t in (ae, mlp, cnn)}
    assert f"against Adam tuned over {grid} learning rates" in lesson
    for task, what in ((ae, "on the digits autoencoder"), (mlp, "on an MLP classifier")):
        h = task["targets"][-1]
        assert f"{h['step_ratio']:.1f}x fewer steps and {h['time_ratio']:.1f}x less time {what}" in lesson
    h = cnn["targets"][-1]
    assert f"it needed {h['step_ratio']:.1f}x fewer steps but saved only {h['time_ratio']:.1f}x in time" in lesson
    assert f"each step cost {cnn['time_per_step_ratio']:.1f}x an Adam step" in lesson
    goals = {g["goal"]: g["value"] for g in r["goals"]}
    assert all(v == 0 for k, v in goals.items() if "diverges" in k) and "None of its runs diverged" in lesson
    # the lesson says both CNN goals were met: the wall-clock one and the per-step one (side by side)
    (wall,) = [v for k, v in goals.items() if "CNN" in k and "less wall-clock" in k]
    (per_step,) = [v for k, v in goals.items() if "CNN" in k and "time per step" in k]
    assert per_step == cnn["timing"]["kfac_vs_adam"] and f"({per_step:.2f}x when the two are timed side by side)" in lesson
    assert wall >= 2 and per_step <= 4
    assert ("Both goals set for that task were met, at least 2x less time and at most 4x the cost per step timed "
            "side by side") in lesson
    # how many batches the head's low-rank factor keeps, with K-FAC's defaults
    from natgrad.costs import kfac_schedule
    from natgrad.optim.kfac.linalg import steady_batches

    k = kfac_schedule()
    kept = steady_batches(k["factor_decay"] ** k["wide_update_steps"])
    assert f"kept as the rows of its last {['one', 'two', 'three', 'four'][kept - 1]} batches" in lesson


def test_shampoo_figures():
    r = _load("shampoo")
    ae, mlp, cnn = (r["tasks"][t] for t in ("digits-autoencoder", "digits-classifier", "digits-cnn"))
    assert (f"{ae['targets'][-1]['step_ratio']:.1f}x fewer steps on the autoencoder and "
            f"{mlp['targets'][-1]['step_ratio']:.1f}x fewer on the MLP classifier" in SECTION)
    ratios = [g["value"] for g in r["goals"] if "time per step" in g["goal"]]
    assert f"at {ratios[0]:.2f}x and {ratios[1]:.2f}x Adam's time per step" in SECTION
    first = cnn["targets"][0]
    assert (f"(its loss after {first['adam_horizon']} steps) Shampoo needed only {first['step_ratio']:.1f}x fewer "
            f"steps and {first['time_ratio']:.1f}x less time" in SECTION)
    assert first["step_ratio"] < cnn["targets"][-1]["step_ratio"]  # "grew only as the targets got harder"


def test_soap_and_muon_figures():
    r = _load("soap-muon")
    ae, mlp = r["tasks"]["digits-autoencoder"], r["tasks"]["digits-classifier"]
    s_ae, s_mlp = ae["targets"]["soap"][-1], mlp["targets"]["soap"][-1]
    assert (f"SOAP needed {s_ae['step_ratio']:.1f}x fewer steps on the autoencoder ({s_ae['time_ratio']:.1f}x less "
            f"time) and {s_mlp['step_ratio']:.1f}x fewer on the classifier ({s_mlp['time_ratio']:.1f}x less time), "
            f"at {r['timing']['ours_vs_adam']:.2f}x Adam's time per step" in SECTION)
    m_ae = ae["targets"]["muon"][-1]
    assert f"in {m_ae['step_ratio']:.1f}x fewer steps but only {m_ae['time_ratio']:.1f}x less time" in SECTION
    easy = mlp["targets"]["muon"][0]
    assert all(t["muon_steps"] is None for t in mlp["targets"]["muon"][1:])  # "reached only the easiest target"
    assert f"in {easy['muon_steps']} steps against Adam's {easy['adam_steps']}" in SECTION


def test_sophia_figures():
    r = _load("sophia")
    g, h = r["targets"]["Sophia-G"][-1], r["targets"]["Sophia-H"][-1]
    assert r["protocol"]["batch_size"] == 16 and "mini-batches of 16" in SECTION
    assert (f"needed {g['sophia_steps'] / g['adam_steps']:.2f}x AdamW's steps (Sophia-G) and "
            f"{h['sophia_steps'] / h['adam_steps']:.2f}x (Sophia-H) at the hardest target" in SECTION)
