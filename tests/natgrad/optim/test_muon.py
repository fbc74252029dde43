"""MuonAdam: which parameters go to Muon, and its steps against torch.optim.Muon and AdamW run apart."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natgrad.optim import MuonAdam
from natgrad.optim.muon import split_parameters


class LM(nn.Module):
    def __init__(self, tie: bool = False):
        super().__init__()
        self.emb, self.hidden, self.out = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(self.emb(x))))


def _names(split):
    return [[n for n, _ in side] for side in split]


def test_given_the_model_embeddings_and_the_output_layer_go_to_adamw():
    assert _names(split_parameters(LM())) == [["hidden.weight"], ["emb.weight", "hidden.bias", "out.weight"]]
    # a head tied to the embedding is the output layer: the hidden matrix stays with Muon (from names alone it
    # went to AdamW, as the last matrix registered, and the embedding-and-head to Muon)
    assert _names(split_parameters(LM(tie=True))) == [["hidden.weight"], ["emb.weight", "hidden.bias"]]
    assert _names(split_parameters(LM(tie=True).named_parameters())) == [["emb.weight"], ["hidden.weight", "hidden.bias"]]
    assert _names(split_parameters(LM(), "muon")) == [["hidden.weight", "out.weight"], ["emb.weight", "hidden.bias"]]


def test_plain_parameters_are_refused_with_what_to_pass():
    with pytest.raises(TypeError, match="named_parameters"):
        MuonAdam(LM().parameters())


def test_steps_are_torch_muon_and_adamw_run_apart():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    twin = copy.deepcopy(model)
    ours = MuonAdam(model, lr=0.05, adam_lr=0.01, weight_decay=0.01)
    hidden = [twin[0].weight, twin[2].weight]
    rest = [twin[0].bias, twin[2].bias, twin[4].weight, twin[4].bias]
    muon, adamw = torch.optim.Muon(hidden, lr=0.05, weight_decay=0.01), torch.optim.AdamW(rest, lr=0.01, weight_decay=0.0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(4):
        for m, opts in ((model, [ours]), (twin, [muon, adamw])):
            for o in opts:
                o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            for o in opts:
                o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
