"""The labs' opening results shipped as data (views/labs/defaults, written by
scripts/lab_defaults.py): the codec keeps what a lab draws exactly, and a shipped
result is what natgrad computes today. (tests/app/test_pages.py checks that every
lab's opening settings find their results in the file.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from natgrad.experiments import Spec, Trajectory, run
from natgrad.labs.paths import Path2D
from views.labs import stored


def _round_trip(value):
    return stored.decode(json.loads(json.dumps(stored.encode(value), allow_nan=False)))


def test_the_codec_keeps_trajectories_arrays_tuples_and_odd_floats_exactly():
    spec = Spec.make({"lr": 0.1, "betas": (0.9, 0.99)}, {"target": (0.7, 0.2, 0.1)}, task="simplex-kl",
                     optimizer="riemannian-sgd", steps=2, dtype="float64")
    traj = Trajectory(spec, step=[0, 1], loss=[0.1 + 0.2, math.nan], seconds=[1e-3, 2e-3],
                      extras={"rho": [None, math.inf]}, status="diverged", message="grew",
                      model_state={"w": torch.ones(3)})
    back = _round_trip(traj)
    assert back.spec == spec and hash(back.spec) == hash(spec)  # a Spec comes back as a cache key
    assert back.loss[0] == 0.1 + 0.2 and math.isnan(back.loss[1])
    assert back.extras == {"rho": [None, math.inf]} and (back.status, back.message) == ("diverged", "grew")
    assert back.model_state is None  # weights are not shipped

    arrays = {"f64": np.random.default_rng(0).normal(size=(3, 4)), "f32": np.arange(5, dtype=np.float32) / 3,
              "t": torch.linspace(0, 1, 7, dtype=torch.float64)}
    back = _round_trip(arrays)
    assert back["f64"].dtype == np.float64 and np.array_equal(back["f64"], arrays["f64"])
    assert back["f32"].dtype == np.float32 and np.array_equal(back["f32"], arrays["f32"])
    assert isinstance(back["t"], torch.Tensor) and torch.equal(back["t"], arrays["t"])

    mixed = {("precond", 1): [(3, 0.5)], "__odd": 1}
    assert _round_trip(mixed) == mixed
    path = Path2D(np.zeros((2, 2)), [1.0, 0.5], extras={"clipped_fraction": [1.0]})
    got = _round_trip(path)
    assert isinstance(got, Path2D) and np.array_equal(got.points, path.points) and got.extras == path.extras


def test_the_codec_reads_back_natgrad_classes_only():
    with pytest.raises(ValueError, match="outside natgrad"):
        stored.decode({"__dataclass__": "subprocess.CompletedProcess", "fields": {}})
    with pytest.raises(TypeError):
        stored.encode(object())


def test_key_texts_are_stable():
    spec = Spec.make({"lr": 0.01}, task="digits-autoencoder", optimizer="adam", steps=200)
    assert stored.key_text(spec) == stored.key_text(Spec.make({"lr": 0.01}, task="digits-autoencoder",
                                                              optimizer="adam", steps=200))
    assert stored.key_text(("muon-check", 24, 16, 0)) == "('muon-check', 24, 16, 0)"


def test_a_shipped_result_is_what_natgrad_computes_today():
    """The cheapest shipped runs (the simplex lab's, float64) recomputed: the same losses."""
    entries, meta = stored.load()
    assert entries, f"no shipped lab results at {stored.PATH}: run python scripts/lab_defaults.py"
    assert meta.get("command") == "python scripts/lab_defaults.py"
    cheap = [k for k in entries if k.startswith("Spec(task='simplex-kl'")]
    assert cheap, "the simplex lab's opening runs are not shipped"
    for text in cheap:
        shipped = stored.decode(entries[text])
        assert stored.key_text(shipped.spec) == text
        spec = Spec(**{**shipped.spec.__dict__, "device": "cpu"})
        today = run(spec)
        assert today.status == shipped.status and today.step == shipped.step
        np.testing.assert_allclose(today.loss, shipped.loss, rtol=1e-9, atol=1e-15,
                                   err_msg=f"{text}: run python scripts/lab_defaults.py")
