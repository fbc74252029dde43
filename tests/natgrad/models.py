"""Small models shared by the natgrad tests."""

from __future__ import annotations

import torch
from torch import nn


def mlp(widths, act=nn.Tanh, seed=0, dtype=torch.float64):
    """An MLP ``widths[0] -> ... -> widths[-1]`` with ``act`` between layers, seeded."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if act is not None and i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)
