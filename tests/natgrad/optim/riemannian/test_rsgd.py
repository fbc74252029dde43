"""natgrad's RiemannianSGD against torch.optim.SGD (the oracle on flat parameters) and on a sphere."""

from __future__ import annotations

import geoopt
import pytest
import torch

from natgrad.optim.riemannian import RiemannianSGD

HPARAMS = [dict(momentum=0.9), dict(momentum=0.5, dampening=0.3), dict(momentum=0.9, nesterov=True),
           dict(momentum=0.8, weight_decay=0.1), dict()]


@pytest.mark.parametrize("hp", HPARAMS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "plain")
def test_on_flat_parameters_it_takes_torch_sgds_steps(hp):
    """The momentum buffer starts as torch.optim.SGD's does (its first value is the gradient), so on an
    ordinary parameter every step equals SGD's; geoopt 0.5.1's first step is (1 + momentum) times longer."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64)
    target = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ours, ref = torch.nn.Parameter(a.clone()), torch.nn.Parameter(a.clone())
    opts = RiemannianSGD([ours], lr=0.1, **hp), torch.optim.SGD([ref], lr=0.1, **hp)
    for _ in range(6):
        for p, opt in zip((ours, ref), opts, strict=True):
            opt.zero_grad()
            ((p - target) ** 3).abs().sum().backward()
            before = p.grad.clone()
            opt.step()
            assert torch.equal(p.grad, before)  # as SGD, the step leaves .grad as backward made it (geoopt's did not)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_the_first_momentum_step_on_a_manifold_uses_only_the_riemannian_gradient():
    """On the unit sphere the first step with momentum is the plain Riemannian SGD step (geoopt's
    RiemannianSGD with momentum 0 is the oracle), whatever the gradient's normal component."""
    x = torch.nn.functional.normalize(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64), dim=0)
    normal_heavy = 50.0 * x + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)  # mostly along x itself
    ends = []
    for opt_of in (lambda ps: RiemannianSGD(ps, lr=0.2, momentum=0.9), lambda ps: geoopt.optim.RiemannianSGD(ps, lr=0.2)):
        p = geoopt.ManifoldParameter(x.clone(), manifold=geoopt.Sphere())
        opt = opt_of([p])
        opt.zero_grad()
        (p * normal_heavy).sum().backward()
        opt.step()
        ends.append(p.detach())
    torch.testing.assert_close(ends[0], ends[1], rtol=1e-12, atol=1e-12)


def test_a_closure_is_evaluated_once_and_its_loss_returned():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = RiemannianSGD([p], lr=0.1, momentum=0.9)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure)) == 5.0 and len(calls) == 1
    torch.testing.assert_close(p.detach(), torch.tensor([0.8, 1.6]))
