"""What natgrad's optimizers refuse, and how: hyper-parameters out of range (NaN included) at
construction, complex parameters and sparse gradients at the first step, before anything moves."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from natgrad.optim import KFAC, SOAP, Shampoo, Sophia

NAN = math.nan


def _p(dtype=torch.float32):
    return [torch.randn(4, 3, dtype=dtype, requires_grad=True)]


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.mark.parametrize("make", [
    lambda: Shampoo(_p(), lr=NAN), lambda: Shampoo(_p(), epsilon=NAN), lambda: Shampoo(_p(), graft_beta2=1.5),
    lambda: Shampoo(_p(), graft_beta2=-0.5), lambda: Shampoo(_p(), graft_eps=-1.0), lambda: Shampoo(_p(), weight_decay=NAN),
    lambda: SOAP(_p(), lr=NAN), lambda: SOAP(_p(), eps=NAN), lambda: SOAP(_p(), weight_decay=NAN),
    lambda: KFAC(_net(), kl_clip=-1.0), lambda: KFAC(_net(), kl_clip=0.0), lambda: KFAC(_net(), damping_bounds=(1.0, 1e-3)),
    lambda: KFAC(_net(), damping_bounds=(-1.0, 1.0)),
], ids=["shampoo-lr-nan", "shampoo-eps-nan", "graft-beta2-1.5", "graft-beta2-neg", "graft-eps-neg", "shampoo-wd-nan",
        "soap-lr-nan", "soap-eps-nan", "soap-wd-nan", "kl-clip-neg", "kl-clip-0", "bounds-reversed", "bounds-neg"])
def test_hyper_parameters_out_of_range_are_refused_at_construction(make):
    # (before: NaN parameters after the first step, a complex cast error, or a math domain error mid-training)
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make", [Shampoo, SOAP, Sophia])
def test_complex_parameters_are_refused_before_anything_moves(make):
    # (SOAP diverged silently: g'^2 instead of |g'|^2; Shampoo and Sophia failed in clamp)
    p = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
    start = p.detach().clone()
    opt = make([p])
    p.grad = torch.randn(4, 3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="real parameters"):
        opt.step()
    assert torch.equal(p.detach(), start)


@pytest.mark.parametrize("make", [Shampoo, SOAP])
def test_sparse_gradients_are_refused_by_the_matrix_methods(make):
    emb = nn.Embedding(5, 3, sparse=True)
    start = emb.weight.detach().clone()
    opt = make(emb.parameters())
    emb(torch.tensor([0, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight.detach(), start)


def test_sophia_steps_on_a_sparse_gradient_as_on_its_dense_copy():
    torch.manual_seed(0)
    sparse, dense = nn.Embedding(5, 3, sparse=True), nn.Embedding(5, 3)
    dense.load_state_dict(sparse.state_dict())
    opts = Sophia(sparse.parameters(), lr=0.1), Sophia(dense.parameters(), lr=0.1)
    for _ in range(3):
        for emb, opt in zip((sparse, dense), opts, strict=True):
            opt.zero_grad()
            (emb(torch.tensor([0, 2, 2])) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(sparse.weight, dense.weight, rtol=0, atol=1e-7)


def test_kfac_refuses_a_group_added_after_it_is_built():
    # (it was accepted and never stepped: the new parameter kept its value with a gradient at every step)
    model = _net()
    opt = KFAC(model, likelihood="softmax")
    extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(NotImplementedError, match="part of the model"):
        opt.add_param_group({"params": [extra]})
    assert len(opt.param_groups) == 1 + (opt.fallback is not None and bool(opt.fallback_params))
    opt.step(torch.randn(5, 3), torch.randint(0, 2, (5,)))  # still steps as before


def test_shampoo_refuses_float16_parameters_and_takes_bfloat16():
    # (float16 parameters were inf after the first step, with or without float32 preconditioners, and nothing said so)
    with pytest.raises(ValueError, match="float16"):
        Shampoo(_p(torch.float16))
    p = _p(torch.bfloat16)[0]
    opt = Shampoo([p], lr=0.01, precondition_frequency=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        p.grad = torch.randn(4, 3, generator=g).to(torch.bfloat16)
        opt.step()
    assert torch.isfinite(p).all()


def test_shampoo_takes_settings_changed_between_steps():
    # (raising beta1 from 0 was a KeyError for the missing first moment, a graft with a second moment after
    # grafting=None a TypeError, and a tensor learning rate a TypeError in the graft-only steps)
    p = _p()[0]
    opt = Shampoo([p], lr=torch.tensor(0.01), beta1=0.0, grafting=None, precondition_frequency=2,
                  start_preconditioning_step=3)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        if step == 2:
            opt.param_groups[0].update(beta1=0.9, grafting="adam")
        p.grad = torch.randn(4, 3, generator=g)
        opt.step()
    state = opt.state[p]
    assert torch.isfinite(p).all() and state["step"] == 6
    assert state["exp_avg"].abs().sum() > 0 and state["graft"].abs().sum() > 0
