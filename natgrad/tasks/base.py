"""The two kinds of task a run trains.

* :class:`Task` - a model, a data set and a loss: ``loss(x, y) = loss_fn(model(x), y)``
  on a mini-batch ``(x, y)`` drawn from ``inputs`` and ``targets``. ``likelihood``
  (``"gaussian"`` or ``"softmax"``) names the output distribution whose Fisher
  curvature methods such as K-FAC need.
* :class:`ObjectiveTask` - a model that *is* its objective: ``model()`` returns the
  loss, there is no data and no likelihood (the Kronecker quadratic; manifold toy
  problems). Methods that need a likelihood refuse it with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Batch = tuple[torch.Tensor | None, torch.Tensor | None]


@dataclass(frozen=True)
class Task:
    """A supervised task (module docstring)."""

    model: nn.Module
    inputs: torch.Tensor  # (N, ...)
    targets: torch.Tensor  # (N, ...)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    likelihood: str  # "gaussian" | "softmax"

    @property
    def size(self) -> int:
        return self.inputs.shape[0]

    def batch(self, batch_size: int | None, generator: torch.Generator) -> Batch:
        """The whole data set (``batch_size`` None or >= N) or ``batch_size`` rows drawn
        with replacement from ``generator`` (a CPU generator, so runs repeat across devices)."""
        n = self.size
        if batch_size is None or batch_size >= n:
            return self.inputs, self.targets
        idx = torch.randint(0, n, (batch_size,), generator=generator).to(self.inputs.device)
        return self.inputs[idx], self.targets[idx]

    def loss(self, x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor:
        return self.loss_fn(self.model(x), y)


@dataclass(frozen=True)
class ObjectiveTask:
    """A model whose forward pass, called with no input, returns the objective."""

    model: nn.Module
    likelihood: None = None

    def batch(self, batch_size: int | None, generator: torch.Generator) -> Batch:
        return None, None

    def loss(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model()
