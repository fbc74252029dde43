"""The safeguarded K-FAC step: bounded coefficients, the trust region, rejected steps.

Oracles: a brute-force minimisation of the two-dimensional quadratic model over the
momentum interval (closed form in alpha, a fine grid in mu), the dense exact Fisher of
``natgrad.curvature.exact_fisher`` for the KL of the step actually taken, the weights
before a rejected step, and the rejection rule's own factor.
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from natgrad.curvature import exact_fisher
from natgrad.optim import KFAC
from natgrad.optim.kfac.damping import BOOST
from natgrad.optim.kfac.safeguard import ModelTerms, bounded_coefficients, choose_step
from tests.natgrad.models import mlp

DT = torch.float64


def _data(n=24, d_in=4, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, dtype=DT, generator=g), torch.randint(0, classes, (n,), generator=g)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _random_terms(rng: np.random.Generator) -> ModelTerms:
    """Scalars of a genuine model: F = B^T B (PSD), Delta, delta0 and a gradient in R^6."""
    B = rng.normal(size=(6, 6)) * rng.uniform(0.01, 2)
    F = B.T @ B
    D, d, g = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6)
    return ModelTerms(D @ F @ D, D @ D, g @ D, D @ F @ d, D @ d, d @ F @ d, d @ d, g @ d, momentum=True)


@pytest.mark.parametrize("seed", range(8))
def test_bounded_coefficients_minimise_the_model_over_the_momentum_interval(seed):
    rng = np.random.default_rng(seed)
    terms, lam, mu_max = _random_terms(rng), 10 ** rng.uniform(-4, 0), 0.9
    alpha, mu, bounded = bounded_coefficients(terms, lam, mu_max)
    mus = np.linspace(0, mu_max, 20001)
    CDD, gD, CDd = terms.FDD + lam * terms.DD, terms.gD, terms.FDd + lam * terms.Dd
    alphas = -(gD + mus * CDd) / CDD  # the best alpha for each mu
    values = [terms.change(a, m, lam) for a, m in zip(alphas, mus, strict=True)]
    best = int(np.argmin(values))
    assert 0 <= mu <= mu_max
    assert terms.change(alpha, mu, lam) <= values[best] + 1e-12
    assert mu == pytest.approx(mus[best], abs=1e-3)
    assert bounded == (not 0 <= mus[best] <= mu_max or mus[best] in (0.0, mu_max))


def test_the_trust_region_scales_both_coefficients_onto_its_boundary():
    terms = ModelTerms(FDD=4.0, DD=1.0, gD=-10.0, FDd=0.5, Dd=0.1, Fdd=2.0, dd=1.0, gd=-3.0, momentum=True)
    free = choose_step(terms, 1e-3, max_momentum=0.95)
    assert 0 < free.mu < 0.95 and not free.bound_hit  # the unconstrained minimiser (alpha 2.39, mu 0.90)
    clipped = choose_step(terms, 1e-3, max_momentum=0.95, max_kl=0.01)
    assert free.kl > 0.01 and clipped.kl == pytest.approx(0.01) and clipped.bound_hit
    assert clipped.alpha / free.alpha == pytest.approx(clipped.mu / free.mu) == pytest.approx(clipped.nu)
    assert terms.kl(clipped.alpha, clipped.mu) == pytest.approx(0.01)
    assert clipped.predicted == pytest.approx(terms.change(clipped.alpha, clipped.mu, 1e-3))


def test_steps_respect_the_kl_bound_in_the_exact_fisher_norm():
    """Half the squared Fisher norm of each step actually taken (F from exact_fisher at the
    weights before the step) is at most max_kl, and equals it when the bound was active."""
    model = mlp((4, 8, 3), seed=0)
    X, y = _data()
    opt = KFAC(model, likelihood="softmax", max_kl=2e-3, curvature_examples=None, damping=1e-3)
    hits = 0
    for _ in range(12):
        before = copy.deepcopy(model)
        opt.step(X, y)
        delta = _flat(model) - _flat(before)
        F = exact_fisher(before, X, y, likelihood="softmax", kind="ggn")
        kl = 0.5 * float(delta @ F @ delta)
        s = opt.stats()
        if s["rejected"]:
            assert kl == 0.0
            continue
        assert kl <= 2e-3 * (1 + 1e-8)
        assert kl == pytest.approx(s["kl"], rel=1e-8, abs=1e-14)
        if s["nu"] < 1:
            hits += 1
            assert kl == pytest.approx(2e-3, rel=1e-8)
    assert hits >= 3 and opt.bound_hits >= hits
    assert all(0 <= v <= opt.max_momentum for v in [opt.last_mu])


def test_a_step_that_raises_the_loss_is_undone_and_the_damping_jumps():
    model = mlp((4, 8, 3), seed=0)
    X, y = _data()
    opt = KFAC(model, likelihood="softmax", step_size_rule="fixed", lr=30.0, momentum=0.0, damping=1e-3)
    theta0 = _flat(model)
    loss0 = opt.step(X, y)
    assert torch.equal(_flat(model), theta0)  # undone, bit for bit
    s = opt.stats()
    assert s["rejected"] == 1.0 and s["rejections"] == 1.0 and opt.event_counts == {"rejected": 1}
    assert not s["rho"] >= 0 and opt.damping == pytest.approx(BOOST * 1e-3)  # NaN: M predicted a rise too
    assert opt.events[0].kind == "rejected" and "->" in opt.events[0].message
    losses, dampings = [loss0], [opt.damping]
    while opt.stats()["rejected"] and len(losses) < 20:
        losses.append(opt.step(X, y))
        dampings.append(opt.damping)
    assert all(v == loss0 for v in losses)  # every retry started from the same weights
    assert dampings[:-1] == pytest.approx([1e-3 * BOOST**k for k in range(1, len(dampings))])
    assert opt.step(X, y) < loss0  # the first accepted step lowered the loss
    assert opt.steps == len(losses) + 1


def test_a_rejected_step_in_an_ordinary_loop_with_a_closure():
    model = mlp((4, 8, 3), seed=0)
    X, y = _data()
    opt = KFAC(model, likelihood="softmax", step_size_rule="fixed", lr=30.0, momentum=0.0, damping=1e-3)
    theta0 = _flat(model)
    nn.functional.cross_entropy(model(X), y).backward()
    opt.step(lambda: nn.functional.cross_entropy(model(X), y))
    assert torch.equal(_flat(model), theta0) and opt.rejections == 1
    assert opt.damping == pytest.approx(BOOST * 1e-3)


def test_damping_stays_within_its_bounds():
    model = mlp((4, 8, 3), seed=0)
    X, y = _data()
    opt = KFAC(model, likelihood="softmax", damping=0.5, damping_bounds=(0.1, 1.0), step_size_rule="fixed", lr=20.0)
    seen = []
    for _ in range(15):
        opt.step(X, y)
        seen.append(opt.damping)
    assert min(seen) >= 0.1 and max(seen) <= 1.0 and max(seen) == 1.0  # the rejections pushed it to the top
    assert math.isfinite(opt.step(X, y))
