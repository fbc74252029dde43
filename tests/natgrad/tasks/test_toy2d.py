"""natgrad.tasks.toy2d against closed forms: the negative-curvature quartic's stationary
points and concave region, the linear regression's Fisher, the preconditioned paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natgrad.experiments import TASKS, make_task
from natgrad.tasks.toy2d import NegativeCurvature, linear_regression_fisher, power_path, quadratic_loss


def test_quartic_stationary_points_and_concave_region():
    # 8 (x - 1)^2 (1.3 x^2 + 2 x + 1) = 8 (1.3 x^4 - 0.6 x^3 - 1.7 x^2 + 1)
    d1 = np.poly1d([8 * 4 * 1.3, -8 * 3 * 0.6, -8 * 2 * 1.7, 0])
    d2 = d1.deriv()
    crit = np.sort(d1.r.real)
    assert crit == pytest.approx([-0.6538, 0.0, 1.0], abs=1e-4)
    assert [np.sign(d2(c)) for c in crit] == [1, -1, 1]  # minimum, maximum, minimum
    assert np.sort(d2.r.real) == pytest.approx([(3.6 - 225.12**0.5) / 31.2, (3.6 + 225.12**0.5) / 31.2])  # -0.366, 0.596
    f = NegativeCurvature.value
    assert f(1.0, 4.0) == 0.0 and f(0.0, 4.0) == 8.0
    task = make_task("sophia-toy", 0, torch.device("cpu"), torch.float64, {"x0": 0.5, "y0": 1.0})
    assert "sophia-toy" in TASKS and task.likelihood is None
    loss = task.loss()
    loss.backward()
    g = next(task.model.parameters()).grad
    assert float(loss) == pytest.approx(f(0.5, 1.0))
    torch.testing.assert_close(g, torch.tensor([d1(0.5), 1.0 - 4.0], dtype=torch.float64))


def test_linear_regression_fisher_is_the_input_covariance():
    F = linear_regression_fisher(3.0, 0.5)
    g = np.random.default_rng(0)
    z = g.standard_normal((200_000, 2))
    x = np.stack([z[:, 0], 3.0 * (0.5 * z[:, 0] + np.sqrt(0.75) * z[:, 1])], 1)
    assert np.cov(x.T) == pytest.approx(F, abs=0.05)
    with pytest.raises(ValueError):
        linear_regression_fisher(1.0, 1.0)


def test_power_paths_by_hand():
    """Diagonal Sigma: power -1 contracts both coordinates by (1 - lr); power -1/2 by
    (1 - lr sqrt(Sigma_ii)); the full natural gradient equals power -1 here."""
    F = linear_regression_fisher(0.5, 0.0)
    start, target = np.array([2.0, -1.0]), np.array([0.0, 1.0])
    p1 = power_path(F, -1.0, 0.2, 5, start, target)
    assert p1 == pytest.approx(target + (start - target) * 0.8 ** np.arange(6)[:, None])
    ph = power_path(F, -0.5, 0.2, 5, start, target)
    rates = np.array([1 - 0.2 * 1.0, 1 - 0.2 * 0.5])
    assert ph == pytest.approx(target + (start - target) * rates ** np.arange(6)[:, None])
    assert power_path(F, None, 0.2, 5, start, target) == pytest.approx(p1)
    assert quadratic_loss(F, target, np.array(2.0), np.array(-1.0)) == pytest.approx(0.5 * (4 + 0.25 * 4))
    assert len(power_path(F, -1.0, 5.0, 100, start, target)) < 101  # |1 - 5| > 1: it leaves the plot
