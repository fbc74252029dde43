"""The manifold tasks against independent computations: numpy's covariance and eigenvectors for the
Stiefel PCA gap, scipy's KL divergence for the simplex fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.datasets import load_digits

from natgrad.experiments import make_task
from natgrad.tasks.manifolds import digits_covariance

CPU = torch.device("cpu")


def test_digits_covariance_is_numpys_scaled_to_top_eigenvalue_one():
    c = np.cov(load_digits().data / 16.0, rowvar=False)
    np.testing.assert_allclose(digits_covariance().numpy(), c / np.linalg.eigvalsh(c)[-1], atol=1e-12)


@pytest.mark.parametrize("retraction", ["qr", "cayley"])
def test_stiefel_pca_gap_is_zero_at_the_top_eigenvectors_and_positive_elsewhere(retraction):
    task = make_task("stiefel-pca", 3, CPU, torch.float64, {"k": 5, "retraction": retraction})
    model = task.model
    assert model.q.manifold.name.startswith("Stiefel")
    q0 = model.q.detach().clone()
    np.testing.assert_allclose((q0.T @ q0).numpy(), np.eye(5), atol=1e-12)
    assert float(task.loss().detach()) > 0.1
    w, v = np.linalg.eigh(digits_covariance().numpy())
    assert model.best == pytest.approx(w[-5:].sum())
    with torch.no_grad():
        model.q.copy_(torch.tensor(v[:, -5:][:, ::-1].copy()))
    assert float(task.loss().detach()) == pytest.approx(0, abs=1e-12)
    stats = model.stats()
    assert stats["objective"] == pytest.approx(w[-5:].sum()) and stats["orthogonality error"] < 1e-12
    with pytest.raises(ValueError, match="k must be"):
        make_task("stiefel-pca", 0, CPU, torch.float32, {"k": 65})
    with pytest.raises(ValueError, match="retraction"):
        make_task("stiefel-pca", 0, CPU, torch.float32, {"retraction": "polar"})


def test_simplex_kl_is_scipys_relative_entropy():
    target, start = (0.5, 0.3, 0.2), (0.1, 0.1, 0.8)
    task = make_task("simplex-kl", 0, CPU, torch.float64, {"target": target, "start": start})
    assert float(task.loss().detach()) == pytest.approx(scipy.stats.entropy(target, start), rel=1e-12)
    assert task.model.stats() == pytest.approx({"p1": 0.1, "p2": 0.1, "p3": 0.8})
    uniform = make_task("simplex-kl", 0, CPU, torch.float64, {"target": target})
    assert float(uniform.loss().detach()) == pytest.approx(scipy.stats.entropy(target, [1 / 3] * 3), rel=1e-12)
    assert make_task("simplex-kl", 0, CPU, torch.float32, {"exact": True}).model.p.manifold.name.endswith("(exact)")
    for bad in ({"target": (0.5, 0.6, -0.1)}, {"target": (0.5, 0.5), "start": (0.2, 0.3, 0.5)}):
        with pytest.raises(ValueError):
            make_task("simplex-kl", 0, CPU, torch.float32, bad)


def test_simplex_kl_checks_its_points_in_the_tasks_dtype():
    # (1e-300 passed the float64 check, became 0 in float32, and the loss was inf off the manifold)
    from natgrad.experiments import make_task

    start = (1 - 2e-300, 1e-300, 1e-300)
    with pytest.raises(ValueError, match="start has a probability below 1e-12 in torch.float32"):
        make_task("simplex-kl", 0, torch.device("cpu"), torch.float32, {"start": start})
    with pytest.raises(ValueError, match="below 1e-12"):  # below the floor in float64 too
        make_task("simplex-kl", 0, torch.device("cpu"), torch.float64, {"start": start})
    task = make_task("simplex-kl", 0, torch.device("cpu"), torch.float32, {"start": (0.98, 0.01, 0.01)})
    assert math.isfinite(float(task.loss()))


def test_a_floor_no_point_can_meet_is_refused():
    from natgrad.optim.riemannian import ProbabilitySimplex

    s = ProbabilitySimplex(floor=0.4)  # fine for 2 outcomes, impossible for 3
    # (a point renormalised after clamping fell below a large floor: 0.35 here)
    assert float(s.random(2, seed=0).min()) >= 0.4 - 1e-7
    assert float(s.retr(torch.tensor([0.5, 0.5]), torch.tensor([3.0, -3.0])).min()) >= 0.4 - 1e-7
    for call in (lambda: s.random(3, seed=0), lambda: s.retr(torch.tensor([0.2, 0.3, 0.5]), torch.zeros(3))):
        with pytest.raises(ValueError, match="too large for 3 coordinates"):
            call()


def test_stiefel_pca_takes_a_whole_number_of_directions():
    with pytest.raises(ValueError, match="k must be between 1 and 64, got 1.5"):  # (was a TypeError in torch.randn)
        make_task("stiefel-pca", 0, torch.device("cpu"), torch.float64, {"k": 1.5})
