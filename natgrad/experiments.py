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

import inspect
import math
import numbers
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from natgrad.tasks import chars, digits, manifolds, poincare, quadratic, toy2d
from natgrad.tasks.base import ObjectiveTask, Task

DIVERGENCE_FACTOR = 1e3


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
    eval_every: int | None = None  # also record the loss on the whole data set every this many steps
    keep_model: bool = False  # also return the trained model's state_dict (Trajectory.model_state), e.g. to sample text

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
    # with spec.eval_every: the loss on the whole data set before the update at eval_step, and the
    # training seconds spent until then (evaluation time not counted)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    status: str = "ok"  # "ok" | "diverged" | "stopped" | "error"
    message: str = ""
    model_state: dict[str, torch.Tensor] | None = None  # with spec.keep_model: the model at the end, on the CPU

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if self.loss else math.nan

    def curve(self) -> tuple[list[int], list[float], list[float]]:
        """(steps, losses, seconds) of the whole-data-set evaluations when there are any
        (mini-batch runs with ``eval_every``), else of the per-step training losses."""
        if self.eval_step:
            return self.eval_step, self.eval_loss, self.eval_seconds
        return self.step, self.loss, self.seconds

    def steps_to(self, target: float) -> int | None:
        """First recorded step at which the loss (:meth:`curve`) is at or below ``target``."""
        steps, losses, _ = self.curve()
        return next((s for s, v in zip(steps, losses, strict=True) if v <= target), None)

    def seconds_to(self, target: float) -> float | None:
        _, losses, seconds = self.curve()
        return next((t for t, v in zip(seconds, losses, strict=True) if v <= target), None)


# ----------------------------------------------------------------------------- tasks
TaskBuilder = Callable[..., Task | ObjectiveTask]  # (seed, device, dtype, **options) -> task

TASKS: dict[str, TaskBuilder] = {
    "digits-autoencoder": digits.autoencoder_task,
    "digits-classifier": digits.classifier_task,
    "digits-cnn": digits.cnn_task,
    "kron-quadratic": quadratic.kron_quadratic_task,
    "stiefel-pca": manifolds.stiefel_pca_task,
    "simplex-kl": manifolds.simplex_kl_task,
    "poincare-tree": poincare.poincare_tree_task,
    "lesson-chars": chars.chars_task,
    "sophia-toy": toy2d.negative_curvature_task,
}


def make_task(name: str, seed: int, device: torch.device, dtype: torch.dtype,
              options: dict[str, Any] | None = None) -> Task | ObjectiveTask:
    """The task registered as ``name`` in :data:`TASKS`, built with ``options``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    builder = TASKS[name]
    options = options or {}
    params = inspect.signature(builder).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in options if k in ("seed", "device", "dtype") or not (open_ended or k in params))
    if unknown:
        accepted = sorted(k for k, p in params.items() if k not in ("seed", "device", "dtype")
                          and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        raise ValueError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; "
                         + (f"its options are {', '.join(accepted)}" if accepted else "it takes no options"))
    return builder(seed=seed, device=device, dtype=dtype, **options)


# ------------------------------------------------------------------------ optimizers
class Stepper(Protocol):
    """What :func:`run` trains with: one update per call, and what to record."""

    def step(self, x: torch.Tensor | None, y: torch.Tensor | None) -> float:
        """One update on the batch ``(x, y)``; returns the loss before it."""

    def stats(self) -> dict[str, float | None]:
        """Scalars to record after the update (may be empty)."""


@dataclass
class TorchStepper:
    """A ``torch.optim.Optimizer`` driven by an ordinary loop: zero, loss, backward, step."""

    optimizer: torch.optim.Optimizer
    task: Task | ObjectiveTask

    def step(self, x, y) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(x, y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def stats(self) -> dict[str, float | None]:
        stats = getattr(self.optimizer, "stats", None)
        return stats() if callable(stats) else {}


def _adam(task, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0) -> Stepper:
    return TorchStepper(torch.optim.Adam(task.model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                         weight_decay=weight_decay), task)


def _sgd(task, lr=0.1, momentum=0.9, weight_decay=0.0) -> Stepper:
    return TorchStepper(torch.optim.SGD(task.model.parameters(), lr=lr, momentum=momentum,
                                        weight_decay=weight_decay), task)


def _adamw(task, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01) -> Stepper:
    return TorchStepper(torch.optim.AdamW(task.model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                          weight_decay=weight_decay), task)


def _shampoo(task, **hparams) -> Stepper:
    from natgrad.optim import Shampoo

    return TorchStepper(Shampoo(task.model.named_parameters(), **hparams), task)


def _kfac(task, **hparams) -> Stepper:
    from natgrad.optim import KFAC

    if task.likelihood is None:
        raise ValueError("K-FAC needs a model with a likelihood (a network whose output is a prediction); "
                         "this task's model returns its own objective")
    if task.likelihood == "softmax" and task.targets.ndim != 1:
        raise ValueError(f"K-FAC's softmax likelihood takes one class label per example ((N, C) logits); this task "
                         f"has a label per position (targets {tuple(task.targets.shape)})")
    return KFAC(task.model, likelihood=task.likelihood, **hparams)


def _soap(task, **hparams) -> Stepper:
    from natgrad.optim import SOAP

    return TorchStepper(SOAP(task.model.named_parameters(), **hparams), task)


def _muon(task, **hparams) -> Stepper:
    from natgrad.optim import MuonAdam

    return TorchStepper(MuonAdam(task.model, **hparams), task)  # the model: its embeddings go to AdamW


def _manifold_aware(builder: Callable[..., Stepper]) -> Callable[..., Stepper]:
    """Mark a builder whose optimizer knows about ``geoopt.ManifoldParameter`` s (see :func:`make_stepper`)."""
    builder.manifold_aware = True
    return builder


@_manifold_aware
def _riemannian_sgd(task, lr=1e-2, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                    stabilize=None) -> Stepper:
    from natgrad.optim.riemannian import RiemannianSGD

    return TorchStepper(RiemannianSGD(task.model.parameters(), lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, stabilize=stabilize), task)


@_manifold_aware
def _riemannian_adam(task, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
                     stabilize=None) -> Stepper:
    from natgrad.optim.riemannian import RiemannianAdam

    return TorchStepper(RiemannianAdam(task.model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                       weight_decay=weight_decay, amsgrad=amsgrad, stabilize=stabilize), task)


@_manifold_aware
def _projected_sgd(task, lr=0.1, momentum=0.0, weight_decay=0.0) -> Stepper:
    from natgrad.optim.riemannian import ProjectedSGD

    return TorchStepper(ProjectedSGD(task.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay),
                        task)


@_manifold_aware
def _projected_adam(task, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0) -> Stepper:
    from natgrad.optim.riemannian import ProjectedAdam

    return TorchStepper(ProjectedAdam(task.model.parameters(), lr=lr, betas=(beta1, beta2), eps=eps,
                                      weight_decay=weight_decay), task)


def _sophia(task, estimator="gnb", **hparams) -> Stepper:
    from natgrad.optim import SophiaStepper

    if isinstance(task, ObjectiveTask):  # no data, no likelihood: only Hutchinson's estimate applies
        return SophiaStepper(task.model, None, None, estimator=estimator, **hparams)
    return SophiaStepper(task.model, task.loss_fn, task.likelihood, estimator=estimator, **hparams)


OptimizerBuilder = Callable[..., Stepper]  # (task, **hparams) -> Stepper; raises ValueError where it does not apply

OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "adam": _adam,
    "sgd": _sgd,
    "kfac": _kfac,
    "shampoo": _shampoo,
    "soap": _soap,
    "muon": _muon,
    "riemannian-sgd": _riemannian_sgd,  # geoopt's, momentum from the Riemannian gradient; natural gradient on the simplex
    "riemannian-adam": _riemannian_adam,  # geoopt (Becigneul & Ganea 2019)
    "projected-sgd": _projected_sgd,  # Euclidean step, then back onto the manifold
    "projected-adam": _projected_adam,
    "adamw": _adamw,
    "sophia": _sophia,
}


def make_stepper(name: str, task: Task | ObjectiveTask, hparams: dict[str, Any]) -> Stepper:
    """The optimizer registered as ``name`` in :data:`OPTIMIZERS` for ``task``.

    An optimizer that does not know about manifolds refuses a task with a
    ``geoopt.ManifoldParameter``, saying why, unless ``hparams`` holds
    ``on_manifold="warn"`` (a run that shows the failure on purpose): then it warns.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    builder, hparams = OPTIMIZERS[name], dict(hparams)
    on_manifold = hparams.pop("on_manifold", "refuse")
    if getattr(builder, "manifold_aware", False):
        return builder(task, **hparams)
    from natgrad.optim.riemannian.guard import ManifoldParameterWarning, check_euclidean

    check_euclidean(task.model.parameters(), name, on_manifold)
    with warnings.catch_warnings():  # said once, above: not again by the optimizer's own constructor
        warnings.simplefilter("ignore", ManifoldParameterWarning)
        return builder(task, **hparams)


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def _check_spec(spec: Spec) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a spec names; a ValueError naming the field for a spec no run can follow
    (as opposed to settings a run can try and fail with, which end the run with a message)."""
    if not _whole(spec.steps, 1):
        raise ValueError(f"steps must be a whole number of at least 1, got {spec.steps!r}")
    if spec.batch_size is not None and not _whole(spec.batch_size, 1):
        raise ValueError(f"batch_size must be None (the full batch) or a whole number of at least 1, got {spec.batch_size!r}")
    if spec.eval_every is not None and not _whole(spec.eval_every, 0):
        raise ValueError(f"eval_every must be None, 0 (never) or a whole number of steps, got {spec.eval_every!r}")
    if not _whole(spec.threads, 1):
        raise ValueError(f"threads must be a whole number of at least 1, got {spec.threads!r}")
    dtype = getattr(torch, str(spec.dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must name a torch floating-point type such as 'float32', got {spec.dtype!r}")
    try:
        device = torch.device(spec.device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {spec.device!r}") from exc
    return device, dtype


def run(
    spec: Spec,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Trajectory:
    """Train ``spec.steps`` updates and return the per-step record.

    ``progress(done, total)`` is called about 50 times; ``should_stop()`` is
    polled at the same moments and ends the run early ("stopped"). A task, optimizer or
    hyper-parameter that fails ends the run with ``status="error"`` and the reason; a spec no run
    can follow (no steps, a batch of 0, an unknown dtype or device) raises ValueError at once.
    """
    device, dtype = _check_spec(spec)
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
        stepper = make_stepper(spec.optimizer, task, spec.options)
    except (TypeError, ValueError) as exc:
        traj.status, traj.message = "error", f"Could not build {spec.optimizer}: {exc}"
        return traj
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    every = max(1, spec.steps // 50)
    elapsed = 0.0
    first = None
    for t in range(spec.steps):
        if spec.eval_every and t % spec.eval_every == 0:
            _evaluate(task, traj, t, elapsed)
        x, y = task.batch(spec.batch_size, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            loss = stepper.step(x, y)
        except (RuntimeError, torch.linalg.LinAlgError) as exc:
            traj.status = "error"
            traj.message = f"Step {t} failed: {exc}. Try a smaller learning rate or more damping."
            break
        except ValueError as exc:  # the optimizer does not fit this task's outputs or targets: no setting helps
            traj.status, traj.message = "error", f"{spec.optimizer} cannot train {spec.task!r}: {exc}"
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        first = loss if first is None else first
        traj.step.append(t)
        traj.loss.append(loss)
        traj.seconds.append(elapsed)
        model_stats = getattr(task.model, "stats", None)  # manifold tasks: constraint errors, positions
        for k, v in (stepper.stats() | (model_stats() if callable(model_stats) else {})).items():
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
    else:
        if spec.eval_every:
            _evaluate(task, traj, spec.steps, elapsed)
    if spec.keep_model:
        traj.model_state = {k: v.detach().to("cpu", copy=True) for k, v in task.model.state_dict().items()}
    for values in traj.extras.values():
        values.extend([None] * (len(traj.step) - len(values)))
    return traj


def _evaluate(task: Task | ObjectiveTask, traj: Trajectory, step: int, elapsed: float) -> None:
    """Record the loss on the whole data set (no gradient, no effect on training)."""
    x, y = task.batch(None, None)
    with torch.no_grad():
        traj.eval_step.append(step)
        traj.eval_loss.append(float(task.loss(x, y)))
        traj.eval_seconds.append(elapsed)
