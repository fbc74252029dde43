"""Copies of natgrad's optimizers: ``copy.deepcopy`` and pickling keep everything an optimizer needs to
go on (torch's Optimizer pickles only defaults, state and param_groups), and K-FAC, which owns its
model, refuses with the way to checkpoint it."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from natgrad.optim import KFAC, SOAP, Shampoo, Sophia

MAKERS = {
    "Shampoo": lambda ps: Shampoo(ps, lr=0.05, precondition_frequency=2, start_preconditioning_step=2),
    "SOAP": lambda ps: SOAP(ps, lr=0.05, precondition_frequency=2),
    "Sophia": lambda ps: Sophia(ps, lr=0.05),
}


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)]


def _steps(opt: torch.optim.Optimizer, seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", list(MAKERS))
def test_a_copy_goes_on_exactly_as_the_original(name, how):
    opt = MAKERS[name](_params())
    _steps(opt, 1, 3)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    _steps(opt, 2, 4)  # past a refresh of the preconditioners
    _steps(twin, 2, 4)
    for a, b in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"], strict=True):
        assert a is not b and torch.equal(a, b)
    mine, theirs = opt.state_dict(), twin.state_dict()
    assert mine.keys() == theirs.keys() and len(mine["state"]) == len(theirs["state"]) == 2


def test_kfac_refuses_a_copy_and_says_how_to_checkpoint():
    model = nn.Sequential(nn.Linear(3, 4))
    opt = KFAC(model, likelihood="softmax")
    opt.step(torch.randn(6, 3), torch.randint(0, 4, (6,)))
    for copier in (copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="state_dict"):
            copier(opt)
