"""The opening of a ``step`` shared by natgrad's torch optimizers (Shampoo, SOAP, Sophia)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def begin_step(opt: torch.optim.Optimizer, closure: Callable[[], torch.Tensor] | None, *, real: bool = True,
               dense: bool = True) -> tuple[torch.Tensor | None, list[tuple[dict, list[torch.Tensor]]]]:
    """``closure()``'s loss (evaluated with gradients on, as torch.optim does; None without a
    closure) and the work of this step: ``(group, its parameters that have a gradient)`` for
    every param group with at least one such parameter. Parameters without a gradient are
    skipped, as in torch.optim. ``real`` / ``dense``: a complex parameter / a sparse gradient is
    refused (TypeError / RuntimeError, as torch.optim.Adam refuses sparse gradients) before anything
    changes, for an optimizer whose matrix roots, clipping or eigenbases assume real, dense tensors."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    work = [(group, [p for p in group["params"] if p.grad is not None]) for group in opt.param_groups]
    for _, ps in work:
        for p in ps:
            if real and p.is_complex():
                raise TypeError(f"{type(opt).__name__} works on real parameters; one of shape {tuple(p.shape)} is "
                                f"{p.dtype} (torch.view_as_real gives its real and imaginary parts as a real tensor)")
            if dense and p.grad.is_sparse:
                raise RuntimeError(f"{type(opt).__name__} does not take sparse gradients (a parameter of shape "
                                   f"{tuple(p.shape)} has one): use a dense layer (e.g. nn.Embedding(sparse=False))")
    return loss, [(group, ps) for group, ps in work if ps]


def warn_on_manifold(opt, optimizer: str | None = None) -> None:
    """A :class:`~natgrad.optim.riemannian.guard.ManifoldParameterWarning` when a Euclidean optimizer of natgrad's
    (``opt``, named ``optimizer``, default its class name) holds parameters that live on a manifold (a
    ``geoopt.ManifoldParameter``): its steps leave the manifold. geoopt is imported only when some parameter
    carries a manifold."""
    params = [p for group in opt.param_groups for p in group["params"]]
    if any(getattr(p, "manifold", None) is not None for p in params):
        from natgrad.optim.riemannian.guard import warn_euclidean

        warn_euclidean(params, optimizer or type(opt).__name__, stacklevel=3)


class KeepsAttributes:
    """Mixed into a ``torch.optim.Optimizer`` that keeps more than ``defaults``, ``state`` and
    ``param_groups`` (step counters, event logs, block plans, a generator): torch's ``__getstate__``
    pickles those three only, so ``copy.deepcopy`` or a pickle gave an optimizer that could neither
    step nor save. Hooks are left out, as torch leaves them out (its ``__setstate__`` starts them empty)."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not (k.startswith("_optimizer_") and k.endswith("_hooks"))}
