"""After many steps through natgrad.experiments.run the constraints still hold, checked on the
parameter itself after the run's last step and, through the run's records, after every step:
max |Q^T Q - I| < 1e-5 in float32, every Poincare point inside the unit disk, every simplex point
positive and summing to 1 within 1e-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from natgrad.experiments import Spec, make_stepper, make_task, run

STEPS = 200


def _train(spec: Spec):
    """The trajectory of ``run`` and, independently, the parameter after the same steps with the same optimizer."""
    traj = run(spec)
    task = make_task(spec.task, spec.seed, torch.device("cpu"), getattr(torch, spec.dtype), dict(spec.task_options))
    stepper = make_stepper(spec.optimizer, task, spec.options)
    for _ in range(spec.steps):
        stepper.step(None, None)
    return traj, next(iter(task.model.parameters())).detach()


@pytest.mark.parametrize(("optimizer", "hparams", "options"), [
    ("riemannian-adam", {"lr": 0.1}, {"retraction": "qr"}),
    ("riemannian-sgd", {"lr": 0.5, "momentum": 0.9}, {"retraction": "qr"}),
    ("projected-adam", {"lr": 0.1}, {"retraction": "qr"}),
    # geoopt's Cayley retraction solves a linear system each step; in float32 its rounding builds up
    # (about 2e-5 after 300 steps), so it is re-projected every 20 steps (geoopt's ``stabilize``)
    ("riemannian-adam", {"lr": 0.1, "stabilize": 20}, {"retraction": "cayley"}),
], ids=["radam-qr", "rsgd-momentum-qr", "adam-reorthonormalised", "radam-cayley-stabilised"])
def test_stiefel_stays_orthonormal_in_float32(optimizer, hparams, options):
    spec = Spec.make(hparams, dict(k=6, **options), task="stiefel-pca", optimizer=optimizer, steps=STEPS)
    traj, q = _train(spec)
    assert traj.status == "ok" and q.dtype == torch.float32
    assert float((q.T @ q - torch.eye(6)).abs().max()) < 1e-5
    assert max(traj.extras["orthogonality error"]) < 1e-5


def test_plain_adam_on_stiefel_is_not_orthonormal():
    """The constraint test can fail: Euclidean Adam on the same task leaves the manifold."""
    spec = Spec.make({"lr": 0.1, "on_manifold": "warn"}, {"k": 6}, task="stiefel-pca", optimizer="adam", steps=20)
    with pytest.warns(UserWarning, match="Euclidean optimizer"):
        traj = run(spec)
    assert traj.extras["orthogonality error"][-1] > 0.1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("optimizer", "hparams"), [
    ("riemannian-adam", {"lr": 0.3}), ("riemannian-sgd", {"lr": 3.0}), ("projected-adam", {"lr": 0.05})])
def test_poincare_points_stay_inside_the_disk(optimizer, hparams, dtype):
    spec = Spec.make(hparams, {"tree": "balanced", "branching": 2, "depth": 3}, task="poincare-tree",
                     optimizer=optimizer, steps=STEPS, dtype=dtype)
    traj, x = _train(spec)
    assert traj.status == "ok"
    assert float(x.norm(dim=-1).max()) < 1
    assert max(traj.extras["max norm"]) < 1 and max(traj.extras["max norm"]) > 0.9  # pushed towards the boundary
    assert all(math.isfinite(v) for v in traj.loss)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("optimizer", "hparams", "exact"), [
    ("riemannian-sgd", {"lr": 1.5}, False), ("riemannian-sgd", {"lr": 1.5}, True),
    ("riemannian-adam", {"lr": 0.3}, False), ("projected-sgd", {"lr": 0.5}, False)])
def test_simplex_points_stay_positive_and_normalised(optimizer, hparams, exact, dtype):
    options = {"target": (0.97, 0.02, 0.01), "start": (0.01, 0.01, 0.98), "exact": exact}
    spec = Spec.make(hparams, options, task="simplex-kl", optimizer=optimizer, steps=STEPS, dtype=dtype)
    traj, p = _train(spec)
    assert bool((p > 0).all()) and abs(float(p.sum()) - 1) < 1e-6
    path = np.array([traj.extras[f"p{i}"] for i in (1, 2, 3)]).T  # (steps, 3)
    assert len(path) == STEPS and (path > 0).all() and np.abs(path.sum(1) - 1).max() < 1e-6
