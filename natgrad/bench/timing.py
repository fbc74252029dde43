"""Time optimizers side by side in one process, as ratios that survive a noisy machine.

Each optimizer trains its own copy of the same model on the same data. After
``warmup_blocks`` untimed blocks each, the optimizers take turns running
``block`` consecutive iterations (forward, backward, step); the rotation
changes every round, so a slow spell of a shared machine hits all of them.
A block's time / ``block`` is one sample; the median over ``blocks`` samples
is the time per iteration. With ``block`` a multiple of an optimizer's
amortisation interval every sample holds the same number of expensive steps.

Usage::

    from natgrad.bench.timing import side_by_side
    t = side_by_side({"Adam": lambda m: torch.optim.Adam(m.parameters())}, make_task, blocks=10)
    t["seconds_per_step"]["Adam"]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from natgrad.experiments import Stepper, TorchStepper
from natgrad.tasks.base import ObjectiveTask, Task

# (task) -> Stepper, or (model) -> torch.optim.Optimizer (wrapped in a TorchStepper)
Factory = Callable[..., object]


def _stepper(make: Factory, task: Task | ObjectiveTask) -> Stepper:
    if getattr(make, "takes_task", False):
        return make(task)
    return TorchStepper(make(task.model), task)


def takes_task(fn: Factory) -> Factory:
    """Mark a factory that builds a :class:`~natgrad.experiments.Stepper` from a task
    (K-FAC, Sophia-G) instead of an optimizer from a model."""
    fn.takes_task = True
    return fn


def side_by_side(factories: Mapping[str, Factory], make_task: Callable[[], Task | ObjectiveTask], *,
                 blocks: int = 20, block: int = 10, warmup_blocks: int = 2, batch_size: int | None = None,
                 threads: int = 1, seed: int = 0) -> dict:
    """Median seconds per training iteration of each optimizer (module docstring).

    ``make_task()`` builds a fresh task (its own model) per optimizer; batches are
    drawn with the same generator seed for every optimizer. Returns
    ``seconds_per_step`` and ``mean_seconds_per_step`` (``{name: s}``),
    ``final_loss`` (``{name: loss}``), ``blocks``, ``block`` and ``threads``.
    """
    if not factories:
        raise ValueError("side_by_side needs at least one optimizer to time")
    if blocks < 1 or block < 1 or warmup_blocks < 0 or threads < 1:
        raise ValueError(f"need blocks >= 1, block >= 1, warmup_blocks >= 0 and threads >= 1, got {blocks}, {block}, "
                         f"{warmup_blocks}, {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = {}
        for name, make in factories.items():
            task = make_task()
            runs[name] = (task, _stepper(make, task), torch.Generator().manual_seed(seed))
        device = next(iter(runs.values()))[0].model.parameters().__next__().device

        def iterate(task, stepper, gen, n: int) -> float:
            loss = float("nan")
            for _ in range(n):
                loss = stepper.step(*task.batch(batch_size, gen))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return loss

        for run in runs.values():
            iterate(*run, warmup_blocks * block)
        names = list(runs)
        samples: dict[str, list[float]] = {n: [] for n in names}
        losses = {}
        for b in range(blocks):
            for name in names[b % len(names):] + names[:b % len(names)]:
                t0 = time.perf_counter()
                losses[name] = iterate(*runs[name], block)
                samples[name].append((time.perf_counter() - t0) / block)
    finally:
        torch.set_num_threads(previous)
    return dict(seconds_per_step={n: statistics.median(s) for n, s in samples.items()},
                mean_seconds_per_step={n: statistics.fmean(s) for n, s in samples.items()},
                final_loss=losses, blocks=blocks, block=block, threads=threads)
