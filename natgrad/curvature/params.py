"""Parameter bookkeeping shared by the curvature tools.

Flattening convention used everywhere in ``natgrad.curvature``: take the
parameters with ``requires_grad`` in ``model.parameters()`` order and
concatenate ``p.reshape(-1)`` (PyTorch row-major). For ``nn.Linear`` with weight
``W`` (out, in) and bias ``b`` (out,) the layer's slice is

    [W[0, 0], W[0, 1], ..., W[0, in-1], W[1, 0], ..., W[out-1, in-1], b[0], ..., b[out-1]]

i.e. ``W[o, i]`` sits at offset ``o * in + i`` and ``b[o]`` at ``out * in + o``.
This is the order of ``torch.cat([p.reshape(-1) for p in model.parameters()])``
and of curvlinops' operators.
"""

from __future__ import annotations

import torch
from torch import nn


def param_list(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs with ``requires_grad``, in ``model.parameters()`` order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def num_params(model: nn.Module) -> int:
    """Length P of the flattened parameter vector."""
    return sum(p.numel() for _, p in param_list(model))


def flatten_params(
    tensors: dict[str, torch.Tensor] | list[torch.Tensor], model: nn.Module, batch_dims: int = 0
) -> torch.Tensor:
    """Concatenate per-parameter tensors in our flattening order.

    ``tensors``: a dict keyed by parameter name (as from ``torch.func``) or a
    list in ``param_list`` order, each of shape ``(*batch, *p.shape)``.
    Returns ``(*batch, P)``.
    """
    names = [n for n, _ in param_list(model)]
    items = [tensors[n] for n in names] if isinstance(tensors, dict) else list(tensors)
    if not items:
        raise ValueError("model has no trainable parameters")
    batch = items[0].shape[:batch_dims]
    return torch.cat([t.reshape(*batch, -1) for t in items], dim=batch_dims)


def _module_of(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def layer_slices(model: nn.Module) -> dict[str, slice]:
    """Slices of the flattened parameter vector, one per layer.

    A *layer* is the module that directly owns the parameters (weight and bias
    of an ``nn.Linear`` together), keyed by its name in ``named_modules()``
    (``""`` for parameters of the root module). Slices are contiguous and in
    flattening order.
    """
    slices: dict[str, slice] = {}
    offset = 0
    for name, p in param_list(model):
        mod = _module_of(name)
        if mod in slices:
            if slices[mod].stop != offset:
                raise ValueError(f"parameters of module {mod!r} are not contiguous in parameters() order")
            slices[mod] = slice(slices[mod].start, offset + p.numel())
        else:
            slices[mod] = slice(offset, offset + p.numel())
        offset += p.numel()
    return slices


def require_independent_examples(model: nn.Module) -> None:
    """Refuse, saying why, layers whose training-mode forward pass couples or randomises the examples: the
    curvature of one example is then not defined (and ``torch.func.vmap`` cannot run them)."""
    for name, m in model.named_modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"layer {name!r} ({type(m).__name__}) is in training mode: it normalises with the batch's "
                             "own statistics, which couples the examples, so one example's Fisher is not defined. "
                             "Call model.eval() first (the running statistics are then constants)")
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ValueError(f"layer {name!r} ({type(m).__name__}) is in training mode: every forward pass is random, "
                             "so the curvature is not one matrix. Call model.eval() first")
