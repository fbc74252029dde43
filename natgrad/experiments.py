"""Run one training experiment from a frozen spec and record what happened.

    spec = Spec(task="digits-autoencoder", optimizer="kfac",
                hparams=(("damping", 1e-2), ("step_size_rule", "quadratic")), steps=200)
    traj = run(spec, progress=lambda done, total: ...)
    traj.loss[-1], traj.status, traj.message

A ``Spec`` is frozen and hashable, so a Streamlit page can cache ``run`` per
distinct spec. ``run`` stops cleanly when the loss stops being finite or grows
``DIVERGENCE_FACTOR`` times above its starting value, and says so in words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from natgrad.tasks import digits, quadratic

DIVERGENCE_FACTOR = 1e3
OPTIMIZERS = ("kfac", "shampoo", "adam", "sgd")


@dataclass(frozen=True)
class Spec:
    task: str = "digits-autoencoder"  # see TASKS
    optimizer: str = "adam"  # see OPTIMIZERS
    hparams: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs
    steps: int = 200
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int | None = None  # None: full batch
    threads: int = 1  # CPU threads for torch; small models run fastest on one
    task_options: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs, e.g. kron-quadratic's condition

    @staticmethod
    def make(hparams: dict[str, Any] | None = None, task_options: dict[str, Any] | None = None, **kwargs) -> Spec:
        return Spec(hparams=tuple(sorted((hparams or {}).items())),
                    task_options=tuple(sorted((task_options or {}).items())), **kwargs)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.hparams)


@dataclass
class Trajectory:
    spec: Spec
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # loss before the update at `step`
    seconds: list[float] = field(default_factory=list)  # cumulative wall time of the updates
    extras: dict[str, list[float | None]] = field(default_factory=dict)  # damping, rho, ...
    status: str = "ok"  # "ok" | "diverged" | "stopped" | "error"
    message: str = ""

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if self.loss else math.nan

    def steps_to(self, target: float) -> int | None:
        """First recorded step at which the loss is at or below ``target``."""
        return next((s for s, v in zip(self.step, self.loss, strict=True) if v <= target), None)

    def seconds_to(self, target: float) -> float | None:
        return next((t for t, v in zip(self.seconds, self.loss, strict=True) if v <= target), None)


@dataclass(frozen=True)
class Task:
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    likelihood: str  # "gaussian" | "softmax" | "none" (the model returns its loss; no K-FAC)


def make_task(name: str, seed: int, device: torch.device, dtype: torch.dtype,
              options: dict[str, Any] | None = None) -> Task:
    """Model, data and loss of task ``name`` (see TASKS).

    ``options`` go to the task's constructor; only ``kron-quadratic`` takes any
    (``m``, ``n``, ``cond_left``, ``cond_right``: :func:`natgrad.tasks.quadratic.kron_quadratic`).
    Its model returns the loss itself and ignores the (1, 1) dummy input.
    """
    options = options or {}
    if name == "kron-quadratic":
        model = quadratic.kron_quadratic(seed=seed, dtype=dtype, device=device, **options)
        dummy = torch.zeros(1, 1, dtype=dtype, device=device)
        return Task(model, dummy, dummy, quadratic.quadratic_loss, "none")
    if options:
        raise ValueError(f"task {name!r} takes no options, got {sorted(options)}")
    X, y = digits.load_digits_tensors(dtype=dtype, device=device)
    if name == "digits-autoencoder":
        model = digits.digits_autoencoder(seed=seed).to(device=device, dtype=dtype)
        return Task(model, X, X, digits.autoencoder_loss, "gaussian")
    if name == "digits-classifier":
        model = digits.digits_classifier(seed=seed).to(device=device, dtype=dtype)
        return Task(model, X, y, nn.functional.cross_entropy, "softmax")
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")


TASKS = ("digits-autoencoder", "digits-classifier", "kron-quadratic")


def make_optimizer(spec: Spec, task: Task):
    """Build the optimizer named in ``spec``; returns ``(opt, step_fn)``.

    ``step_fn(x, y) -> float`` performs one update and returns the loss before it.
    """
    o = spec.options
    params = list(task.model.parameters())
    if spec.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=o.get("lr", 1e-3), betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)),
                               eps=o.get("eps", 1e-8))
    elif spec.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=o.get("lr", 0.1), momentum=o.get("momentum", 0.9))
    elif spec.optimizer == "shampoo":
        from natgrad.optim import Shampoo

        opt = Shampoo(task.model.named_parameters(), **o)
    elif spec.optimizer == "kfac":
        from natgrad.optim import KFAC

        opt = KFAC(task.model, likelihood=task.likelihood, **o)

        def kfac_step(x, y):
            return float(opt.step(x, y))

        return opt, kfac_step
    else:
        raise ValueError(f"unknown optimizer {spec.optimizer!r}; choose one of {OPTIMIZERS}")

    def torch_step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = task.loss_fn(task.model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return opt, torch_step


def _stats(opt) -> dict[str, float | None]:
    stats = getattr(opt, "stats", None)
    return stats() if callable(stats) else {}


def run(
    spec: Spec,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Trajectory:
    """Train ``spec.steps`` updates and return the per-step record.

    ``progress(done, total)`` is called about 50 times; ``should_stop()`` is
    polled at the same moments and ends the run early ("stopped").
    """
    if spec.steps <= 0:
        raise ValueError("steps must be positive")
    device = torch.device(spec.device)
    dtype = getattr(torch, spec.dtype)
    # Process-wide. Small models gain nothing from more threads, and with other
    # work on the machine OpenMP threads can slow a step down 40x.
    torch.set_num_threads(max(1, spec.threads))
    traj = Trajectory(spec)
    try:
        task = make_task(spec.task, spec.seed, device, dtype, dict(spec.task_options))
    except (TypeError, ValueError) as exc:
        traj.status, traj.message = "error", f"Could not build the task {spec.task!r}: {exc}"
        return traj
    try:
        opt, step_fn = make_optimizer(spec, task)
    except (TypeError, ValueError) as exc:
        traj.status, traj.message = "error", f"Could not build {spec.optimizer}: {exc}"
        return traj
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    n = task.inputs.shape[0]
    every = max(1, spec.steps // 50)
    elapsed = 0.0
    first = None
    for t in range(spec.steps):
        if spec.batch_size is None or spec.batch_size >= n:
            x, y = task.inputs, task.targets
        else:
            idx = torch.randint(0, n, (spec.batch_size,), generator=gen).to(device)
            x, y = task.inputs[idx], task.targets[idx]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            loss = step_fn(x, y)
        except (RuntimeError, torch.linalg.LinAlgError) as exc:
            traj.status = "error"
            traj.message = f"Step {t} failed: {exc}. Try a smaller learning rate or more damping."
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        first = loss if first is None else first
        traj.step.append(t)
        traj.loss.append(loss)
        traj.seconds.append(elapsed)
        for k, v in _stats(opt).items():
            traj.extras.setdefault(k, [None] * (len(traj.step) - 1)).append(v)
        if not math.isfinite(loss) or loss > DIVERGENCE_FACTOR * max(first, 1e-12):
            traj.status = "diverged"
            what = "is no longer a finite number" if not math.isfinite(loss) else (
                f"grew from {first:.3g} to {loss:.3g}")
            traj.message = (f"Diverged at step {t}: the loss {what}. "
                            "Lower the learning rate or raise the damping.")
            break
        if (t + 1) % every == 0 or t + 1 == spec.steps:
            if progress is not None:
                progress(t + 1, spec.steps)
            if should_stop is not None and should_stop():
                traj.status, traj.message = "stopped", f"Stopped by request after {t + 1} steps."
                break
    for values in traj.extras.values():
        values.extend([None] * (len(traj.step) - len(values)))
    return traj
