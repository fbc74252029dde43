"""natgrad.labs.paths: Newton's method, Sophia and Adam on the negative-curvature toy, checked
by hand (the first Sophia step, Newton's limit) and against a plain torch loop (Adam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natgrad.labs.paths import newton_path, optimizer_path, toy_paths
from natgrad.tasks.toy2d import NEGATIVE_CURVATURE_START, NegativeCurvature


def test_newton_from_the_concave_region_converges_to_the_saddle():
    p = newton_path(20)
    assert p.status == "ok" and len(p.points) == 21
    assert p.points[1][1] == pytest.approx(4.0)  # one Newton step solves the quadratic in theta_2 exactly
    assert p.points[-1] == pytest.approx([0.0, 4.0], abs=1e-12) and p.loss[-1] == pytest.approx(8.0)


def test_sophia_first_step_by_hand():
    """Step 1 with betas (0.9, 0.5), rho 1, lr 0.05 from (0.2, 0): m = 0.1 g, h = 0.5 diag(H).
    Along theta_1 the curvature is negative, so the step is clipped: +lr (downhill); along theta_2
    |m| / (rho h) = 0.4 / 0.5 = 0.8 < 1: an unclipped step of 0.8 lr."""
    p = optimizer_path("sophia", dict(estimator="hutchinson", betas=(0.9, 0.5), weight_decay=0.0, lr=0.05, rho=1.0,
                                      update_period=10), 1)
    assert p.points[1] == pytest.approx([0.2 + 0.05, 0.0 + 0.05 * 0.8], rel=1e-12)
    assert p.extras["clipped_fraction"] == [0.5]


def test_adam_path_is_torch_adam():
    p = optimizer_path("adam", dict(lr=0.05), 30)
    m = NegativeCurvature(NEGATIVE_CURVATURE_START)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    pts = [m.theta.detach().clone().numpy()]
    for _ in range(30):
        opt.zero_grad()
        m().backward()
        opt.step()
        pts.append(m.theta.detach().clone().numpy())
    np.testing.assert_array_equal(p.points, np.array(pts))


def test_toy_paths_sophia_escapes_where_newton_does_not():
    paths = toy_paths(gamma=1.0, lr=0.05, k=10, steps=100)
    assert set(paths) == {"Sophia", "Adam", "Newton"}
    assert paths["Sophia"].loss[-1] < 0.05 and paths["Newton"].loss[-1] == pytest.approx(8.0)
    assert all(len(p.points) == 101 for p in paths.values())


def test_divergence_is_reported_in_words():
    p = optimizer_path("adam", dict(lr=1e4), 10)
    assert p.status == "diverged" and "Left the plotted region" in p.message
