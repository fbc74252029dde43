"""The optimizer race: which registered optimizers apply to a task, one spec per racer from
its preset, and the break-even of an expensive step.

Built only on the registries (:data:`natgrad.experiments.TASKS`, :data:`~natgrad.experiments.OPTIMIZERS`,
:data:`natgrad.presets.PRESETS`), so an optimizer or task registered later races too. An
optimizer applies to a task when its builder accepts the task with its preset; a builder
that does not apply raises ``ValueError`` (K-FAC on a model that returns its own objective,
Muon on a model without hidden matrices) or ``NotImplementedError``.

    names = applicable("digits-autoencoder")          # {"adam": None, "kfac": None, ...}
    specs = race_specs("digits-autoencoder", {"adam": 1e-2, "soap": 3e-3}, steps=200)
    break_even(adam_trajectory, soap_trajectory)       # {"cost_ratio": 1.4, "step": 23, ...}
"""

from __future__ import annotations

import math
from typing import Any

import torch

from natgrad.experiments import OPTIMIZERS, TASKS, Spec, Trajectory, make_stepper, make_task
from natgrad.presets import PRESETS

LABELS = {"adam": "Adam", "sgd": "SGD+momentum", "kfac": "K-FAC", "shampoo": "Shampoo", "sophia": "Sophia",
          "soap": "SOAP", "muon": "Muon"}


def label(name: str) -> str:
    """How the course names a registered optimizer (its registry name if it has no other)."""
    return LABELS.get(name, name)


def applicable(task: str, device: str = "cpu", dtype: str = "float32") -> dict[str, str | None]:
    """Every registered optimizer -> None if it can train ``task`` with its preset, else why not
    (the builder's message). Builds the task once per optimizer; takes no step."""
    out: dict[str, str | None] = {}
    for name in OPTIMIZERS:
        try:
            t = make_task(task, 0, torch.device(device), getattr(torch, dtype))
            make_stepper(name, t, dict(PRESETS.get(name, {})))
            out[name] = None
        except (ValueError, TypeError, NotImplementedError) as exc:
            out[name] = str(exc)
    return out


def learning_rate(name: str) -> float | None:
    """The preset's learning rate, or None when the optimizer chooses its own step (K-FAC)."""
    lr = PRESETS.get(name, {}).get("lr")
    return None if lr is None else float(lr)


def race_specs(task: str, racers: dict[str, float | None], steps: int, *, batch_size: int | None = None,
               seed: int = 0, device: str = "cpu", task_options: dict[str, Any] | None = None) -> dict[str, Spec]:
    """One spec per racer (optimizer name -> learning rate, None to keep the preset's), labelled
    for display; mini-batch runs also record the whole-data loss about 50 times."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    every = max(1, steps // 50) if batch_size else None
    return {label(name): Spec.make(dict(PRESETS.get(name, {})) | ({} if lr is None else {"lr": lr}), task_options,
                                   task=task, optimizer=name, steps=steps, seed=seed, device=device,
                                   batch_size=batch_size, eval_every=every)
            for name, lr in racers.items()}


def seconds_per_step(t: Trajectory) -> float:
    return t.seconds[-1] / len(t.seconds) if t.seconds else math.nan


def break_even(base: Trajectory, other: Trajectory) -> dict:
    """When ``other``'s dearer steps have paid for themselves against ``base``.

    ``cost_ratio``: other's time per step over base's. ``step`` and ``seconds``: the first
    recorded step of ``other`` (and its training seconds) at which its loss is one that
    ``base`` reaches only later in wall-clock time, or never in its run: from there on
    other's progress so far cost less time than base's. None when that never happens (or
    when the runs have no losses). ``base_steps``: base's steps to that loss (None: never).
    """
    ratio = seconds_per_step(other) / seconds_per_step(base) if base.seconds and other.seconds else math.nan
    out = dict(cost_ratio=ratio, step=None, seconds=None, loss=None, base_steps=None)
    steps, losses, secs = other.curve()
    for s, loss, t in zip(steps, losses, secs, strict=True):
        if not math.isfinite(loss):
            break
        t_base = base.seconds_to(loss)
        if t_base is None or t < t_base:
            out.update(step=s, seconds=t, loss=loss, base_steps=base.steps_to(loss))
            break
    return out
