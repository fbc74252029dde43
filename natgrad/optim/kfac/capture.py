r"""What K-FAC sees of a forward and backward pass: hooks on the model and its layers.

A :class:`Capture` watches every forward pass of the model made with gradients
enabled (K-FAC's own in ``step(x, y)``, or the user's in an ordinary training loop)
and keeps a :class:`Record` of it: the model's arguments and output and, for every
call of a preconditioned layer, its input :math:`a` and its output :math:`s`. When a
backward pass reaches the model's output, ``on_backward(record)`` runs before the
graph below the output is used, so K-FAC can back-propagate its sampled targets
through the same graph (the true Fisher's :math:`G` without a second forward pass);
with ``output_grads=True`` the gradient of the loss with respect to every layer output
is kept as well (the empirical Fisher's :math:`G`). This is how kfac-pytorch's
preconditioner works in an ordinary loop (Pauloski et al., SC20, arXiv 2007.00784),
with the true Fisher added.

A forward pass that no backward pass reaches (an evaluation with gradients on) is
dropped when the next one starts, so no graph is kept alive for long. ``listening=False``
switches recording off: K-FAC does so between the steps of a user who calls
``step(x, y)``, so that other uses of the model (a Fisher computed by another library, an
evaluation) neither pay for nor perturb K-FAC.

:func:`preserved_buffers` keeps the model's buffers (BatchNorm running statistics
and ``num_batches_tracked``) exactly as they were around an extra forward pass
that K-FAC makes for itself (the reduction ratio, forward-mode products).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

MAX_RECORDS = 64  # forward passes kept between two steps (gradient accumulation)


class _Hook:
    """A module hook that a copy of the model does not take along: ``copy.deepcopy(model)``
    and pickling give the copy an inert hook (an evaluation copy or an EMA of the weights
    must not feed K-FAC, nor drag the optimizer into the copy)."""

    def __init__(self, fn: Callable | None) -> None:
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return None if self.fn is None else self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _Hook:
        return _Hook(None)

    def __reduce__(self):
        return (_Hook, (None,))


@dataclass(eq=False)
class Record:
    """One forward pass of the model seen by the hooks."""

    args: tuple
    kwargs: dict
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)  # layer -> [(a, s)]
    out: torch.Tensor | None = None  # the model's output (with its graph)
    backward: bool = False  # a backward pass went through `out`
    cot_grads: list[dict[str, list[torch.Tensor | None]]] = field(default_factory=list)  # per cotangent: ds per call
    loss_grads: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)  # dLoss/ds per call

    @property
    def examples(self) -> int:
        return 0 if self.out is None else int(self.out.shape[0])

    def outputs(self, names: list[str]) -> list[torch.Tensor]:
        """The layer outputs of ``names``' calls, in that order."""
        return [s for n in names for _, s in self.calls.get(n, [])]


class Capture:
    """Forward hooks on ``model`` and on each preconditioned layer (``{name: module}``)."""

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module],
                 on_backward: Callable[[Record], None]) -> None:
        self.records: list[Record] = []
        self.output_grads = False
        self.listening = True  # record passes (K-FAC switches it off between its own steps)
        self._on_backward = on_backward
        self._current: Record | None = None
        self._depth = 0
        self._paused = 0
        self._in_hook = False
        # Forward hooks of one module run in the order they were registered: the layers' before the model's end,
        # so that a model that is itself a layer (a bare nn.Linear) is recorded before its pass is closed.
        self._handles = [model.register_forward_pre_hook(_Hook(self._begin), with_kwargs=True)]
        self._handles += [m.register_forward_hook(_Hook(self._layer(name))) for name, m in layers.items()]
        self._handles.append(model.register_forward_hook(_Hook(self._end), always_call=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No recording inside (K-FAC's own extra forward passes)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def take(self) -> list[Record]:
        """The records since the last call, oldest first; clears them."""
        records, self.records = self.records, []
        return records

    # ------------------------------------------------------------------ hooks
    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._depth += 1
        if self._depth == 1 and self.listening and not self._paused and torch.is_grad_enabled():
            self.records = [r for r in self.records if r.backward][-MAX_RECORDS + 1:]
            self._current = Record(args, kwargs)

    def _end(self, module: nn.Module, args: tuple, output) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth or self._current is None:
            return
        rec, self._current = self._current, None
        if isinstance(output, torch.Tensor) and output.requires_grad and output.ndim >= 1:
            rec.out = output
            output.register_hook(self._backward_hook(rec))
            self.records.append(rec)

    def _layer(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            rec = self._current
            if rec is None or self._paused or not isinstance(output, torch.Tensor):
                return
            calls = rec.calls.setdefault(name, [])
            calls.append((inputs[0].detach(), output))
            if self.output_grads and output.requires_grad:
                slot = rec.loss_grads.setdefault(name, [])
                slot.append(None)
                i = len(slot) - 1
                me = weakref.ref(self)  # see _backward_hook

                def keep(g: torch.Tensor) -> None:
                    capture = me()
                    if capture is not None and not capture._in_hook:
                        slot[i] = g.detach()

                output.register_hook(keep)

        return hook

    def _backward_hook(self, rec: Record):
        # Weak references: a tensor hook lives in the autograd graph (C++), which Python's
        # garbage collector cannot see into, so a hook holding the record (which holds the
        # output tensor and so the graph) or the capture (and so the model and optimizer)
        # would make a cycle nothing ever frees: every K-FAC run would leak its model,
        # factors and last graph.
        me, record = weakref.ref(self), weakref.ref(rec)

        def hook(grad: torch.Tensor) -> None:
            capture, rec = me(), record()
            # K-FAC's own backward passes through the output (from inside this hook, or the
            # double backward of the quadratic model) must not sample a second time
            if capture is None or rec is None or capture._in_hook or rec.backward:
                return
            rec.backward = True
            capture._in_hook = True
            try:
                capture._on_backward(rec)
            finally:
                capture._in_hook = False

        return hook


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (running statistics, counters) on exit."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def forward_with_calls(model: nn.Module, layers: dict[str, nn.Module], args: tuple, kwargs: dict
                       ) -> tuple[torch.Tensor, dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """A fresh forward pass with its graph: the output and ``{layer: [(a, s), ...]}`` of every
    call of the named layers (temporary hooks, removed afterwards)."""
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls.setdefault(name, []).append((inputs[0].detach(), output))

        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in layers.items()]
    try:
        with torch.enable_grad():
            out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out, calls
