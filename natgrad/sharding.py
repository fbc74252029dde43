r"""Train with :class:`~natgrad.optim.DistributedShampoo` on real ``torch.distributed``
ranks and compare with single-process :class:`~natgrad.optim.Shampoo`.

Usage (what the sharding lab runs)::

    from natgrad.sharding import ShardingConfig, run_sharded
    result = run_sharded(ShardingConfig(world_size=2, steps=20), progress=lambda frac, text: ...)
    result.reports[1]["preconditioner_bytes"], result.max_abs_diff

:func:`run_sharded` spawns ``world_size`` gloo processes with
:func:`natgrad.distributed.launch`. Data parallel: rank ``r`` takes digits
``r, r + W, r + 2W, ...`` of the first :data:`DATA_SIZE` (divisible by 1, 2, 3
and 4, so every shard has the same size and the all-reduced mean of the shard
gradients *is* the full-batch gradient, up to rounding). Each rank keeps only
its own blocks' statistics and roots and the directions are all-gathered
(Anil et al. 2020, arXiv 2002.09018; Shi et al. 2023, arXiv 2309.06497). The
single-process reference trains the same model on the full batch, so the
parameter difference measures only floating-point rounding: summation order in
the gradient all-reduce (zero with one rank).

A rank that raises, or hangs past ``collective_timeout_s``, ends the run with
:class:`natgrad.distributed.DistributedRunError` naming it; ``fault`` in the
config injects either on purpose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from natgrad.distributed import launch, report
from natgrad.optim.shampoo.distributed import DistributedShampoo
from natgrad.optim.shampoo.optimizer import Shampoo
from natgrad.presets import SHAMPOO_BASE, SHAMPOO_LR
from natgrad.tasks.digits import AUTOENCODER_WIDTHS, autoencoder_loss, digits_autoencoder, load_digits_tensors

DATA_SIZE = 1788  # = 12 * 149: equal shards on 1, 2, 3 or 4 ranks (and 6, 12)
MAX_RANKS = 4  # ranks run_sharded spawns on this machine at most
MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "autoencoder": ("digits autoencoder 64-128-64-32-8-32-64-128-64", AUTOENCODER_WIDTHS),
    "wide": ("wide autoencoder 64-256-256-64", (64, 256, 256, 64)),
    "wide-mlp": ("wide MLP 64-256-256-256-64", (64, 256, 256, 256, 64)),
}
FAULTS = ("none", "raise", "hang")
COLLECTIVE_TIMEOUT_S = 30.0  # how long a rank waits for its peers (also when they start up)
HANG_TIMEOUT_S = 10.0  # the same with an injected hang
_PROGRESS_EVERY = 5  # steps between a rank's progress messages


@dataclass(frozen=True)
class ShardingConfig:
    """One sharded run; frozen and hashable so a page can cache results per config."""

    world_size: int = 2
    model: str = "autoencoder"  # a key of MODELS
    steps: int = 20  # timed steps
    max_preconditioner_dim: int = 64  # cuts 128- and 256-wide dimensions into blocks
    hparams: tuple[tuple[str, Any], ...] = tuple(sorted((SHAMPOO_BASE | {"lr": SHAMPOO_LR}).items()))
    seed: int = 0
    warmup: int = 0  # untimed steps before the timed ones
    device: str = "cpu"  # each rank's device ("cuda": the rank's own GPU under NCCL)
    fault: str = "none"  # "raise" | "hang": rank fault_rank fails / stops answering at fault_step
    fault_rank: int = 1
    fault_step: int = 3
    widths: tuple[int, ...] = ()  # layer widths of a digits autoencoder other than MODELS[model]

    def __post_init__(self):
        if self.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {self.world_size}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.steps < 1 or self.warmup < 0 or self.max_preconditioner_dim < 1:
            raise ValueError("steps and max_preconditioner_dim must be positive, warmup >= 0")
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}")

    def shampoo_kwargs(self) -> dict[str, Any]:
        return dict(self.hparams) | {"max_preconditioner_dim": self.max_preconditioner_dim}

    def make_model(self) -> torch.nn.Sequential:
        return digits_autoencoder(seed=self.seed, widths=self.layer_widths)

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return self.widths or MODELS[self.model][1]


def _data(device: torch.device | str = "cpu") -> torch.Tensor:
    return load_digits_tensors(device=device)[0][:DATA_SIZE]  # (DATA_SIZE, 64)


def _rank_device(cfg: ShardingConfig) -> torch.device:
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(cfg.device)


def train_rank(rank: int, world_size: int, cfg: ShardingConfig) -> dict:
    """The data-parallel DistributedShampoo loop, run by every rank (module level so
    spawn can pickle it by name; also what ``torchrun`` runs through
    :mod:`natgrad.examples.shampoo_torchrun` and what the benchmark times).

    Rank ``r`` trains on digits ``r, r + W, ...`` of the first :data:`DATA_SIZE` with
    averaged gradients, ``cfg.warmup`` untimed steps, then ``cfg.steps`` timed ones.
    Returns ``rank_report()`` of :class:`DistributedShampoo` plus ``params`` (the
    trained parameters), ``seconds`` (wall time of the timed steps),
    ``seconds_per_step``, ``root_seconds_per_step``, ``comm_seconds_per_step`` (over
    the timed steps), ``shard_loss`` (last loss on this rank's shard) and ``steps``.
    """
    device = _rank_device(cfg)
    X = _data(device)[rank::world_size]  # (DATA_SIZE / W, 64)
    model = cfg.make_model().to(device)
    opt = DistributedShampoo(model.named_parameters(), average_gradients=True, **cfg.shampoo_kwargs())
    report(0)  # steps done so far, to the launcher (a no-op under torchrun)
    loss = torch.tensor(float("nan"))
    root0 = comm0 = 0.0
    t0 = time.perf_counter()
    for t in range(cfg.warmup + cfg.steps):
        if t == cfg.warmup:
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            root0, comm0, t0 = opt.root_seconds, opt.comm_seconds, time.perf_counter()
        if cfg.fault != "none" and rank == cfg.fault_rank and t == cfg.fault_step:
            if cfg.fault == "raise":
                raise RuntimeError(f"injected failure on rank {rank} at step {t}")
            time.sleep(3600)  # "hang": the launcher ends this process after its timeout
        opt.zero_grad()
        loss = autoencoder_loss(model(X), X)
        loss.backward()
        opt.step()
        if (t + 1) % _PROGRESS_EVERY == 0 or t + 1 == cfg.warmup + cfg.steps:
            report(t + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    out = opt.rank_report()
    out.update(params=[p.detach().cpu().clone() for p in model.parameters()], seconds=seconds,
                  seconds_per_step=seconds / cfg.steps, root_seconds_per_step=(opt.root_seconds - root0) / cfg.steps,
                  comm_seconds_per_step=(opt.comm_seconds - comm0) / cfg.steps, shard_loss=float(loss.detach()),
                  steps=cfg.warmup + cfg.steps)
    return out


def single_process(cfg: ShardingConfig) -> tuple[torch.nn.Sequential, Shampoo]:
    """The reference: :class:`Shampoo` on the full :data:`DATA_SIZE` batch, same seed,
    settings and number of steps (warm-up included), on the CPU."""
    X = _data()
    model = cfg.make_model()
    opt = Shampoo(model.named_parameters(), **cfg.shampoo_kwargs())
    for _ in range(cfg.warmup + cfg.steps):
        opt.zero_grad()
        autoencoder_loss(model(X), X).backward()
        opt.step()
    return model, opt


@dataclass
class ShardingResult:
    config: ShardingConfig
    reports: list[dict]  # per rank: rank_report() + seconds, shard_loss (params removed)
    reference_bytes: int  # statistics + roots of single-process Shampoo
    max_abs_diff: float  # max |sharded - single-process| over all parameter entries
    loss: float  # full-batch loss of the sharded run's parameters
    reference_loss: float  # full-batch loss of the single-process parameters
    launch_seconds: float  # spawning, process-group set-up and training, as the caller waited
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def per_rank_bytes(self) -> list[int]:
        return [r["preconditioner_bytes"] for r in self.reports]

    @property
    def balance(self) -> float:
        """Largest per-rank preconditioner bytes over an even share, total / W (1 is perfect)."""
        return max(self.per_rank_bytes) / (self.reference_bytes / self.config.world_size)


def _full_loss(model: torch.nn.Module, params: list[torch.Tensor] | None = None) -> float:
    X = _data()
    with torch.no_grad():
        if params is not None:
            for p, q in zip(model.parameters(), params, strict=True):
                p.copy_(q)
        return float(autoencoder_loss(model(X), X))


class ShardingBusy(RuntimeError):
    """As many sharded runs as :data:`MAX_CONCURRENT_RUNS` are already going on in
    this process (the app's server); the message says since when. Nothing was started."""


MAX_CONCURRENT_RUNS = 1  # sharded runs at once in one process: each takes up to MAX_RANKS processes
_HEARTBEAT_S = 0.5  # progress() is called at least this often, so a caller can interrupt from it
_slots = threading.BoundedSemaphore(MAX_CONCURRENT_RUNS)
_started: dict[int, float] = {}  # thread id -> when its run started (for ShardingBusy's message)
_started_lock = threading.Lock()


def running_since() -> list[float]:
    """Seconds since each sharded run now going on in this process started."""
    now = time.monotonic()
    with _started_lock:
        return sorted(now - t for t in _started.values())


def run_sharded(cfg: ShardingConfig, progress: Callable[[float, str], None] | None = None,
                timeout_s: float = 180.0, collective_timeout_s: float | None = None) -> ShardingResult:
    """Launch ``cfg.world_size`` (at most :data:`MAX_RANKS`) gloo ranks running
    :func:`train_rank`, then train the single-process reference and compare.

    ``progress(fraction, text)`` is called from the calling thread while the
    ranks start and train, at least every 0.5 s. An exception it raises (a page
    that is rerun or closed) ends every rank at once and propagates. Raises
    :class:`ShardingBusy` when :data:`MAX_CONCURRENT_RUNS` runs are already going
    on in this process, and :class:`natgrad.distributed.DistributedRunError`
    naming the rank when one fails or hangs: its peers give up on it after
    ``collective_timeout_s`` (default :data:`COLLECTIVE_TIMEOUT_S`, or
    :data:`HANG_TIMEOUT_S` when ``cfg.fault`` is "hang", so the demonstration is short).
    """
    if collective_timeout_s is None:
        collective_timeout_s = HANG_TIMEOUT_S if cfg.fault == "hang" else COLLECTIVE_TIMEOUT_S
    W = cfg.world_size
    if W > MAX_RANKS:
        raise ValueError(f"this machine runs at most {MAX_RANKS} ranks, got {W}")
    if not _slots.acquire(blocking=False):
        ages = running_since()
        since = f"; the {'latest' if len(ages) > 1 else 'current'} one started {ages[0]:.0f} s ago" if ages else ""
        raise ShardingBusy(f"{MAX_CONCURRENT_RUNS} sharded run{'s are' if MAX_CONCURRENT_RUNS > 1 else ' is'} "
                           f"already going on here{since}")
    me = threading.get_ident()
    with _started_lock:
        _started[me] = time.monotonic()
    try:
        return _run(cfg, progress, timeout_s, collective_timeout_s)
    finally:
        with _started_lock:
            _started.pop(me, None)
        _slots.release()


def _run(cfg: ShardingConfig, progress: Callable[[float, str], None] | None, timeout_s: float,
         collective_timeout_s: float) -> ShardingResult:
    W = cfg.world_size
    total_steps = cfg.warmup + cfg.steps
    done: list[int | None] = [None] * W  # steps each rank reported (None: not started yet)
    shown = {"at": time.monotonic(), "state": None}

    def text() -> tuple[float, str]:
        if not any(d is not None for d in done):
            return 0.0, f"Starting {W} rank{'s' if W > 1 else ''} (new Python processes import torch) ..."
        started = sum(d is not None for d in done)
        trained = sum(d or 0 for d in done) / (W * total_steps)
        return 0.1 + 0.8 * trained, (f"{started} of {W} ranks ready ..." if started < W else
                                     f"Training: step {min(done)}/{total_steps} on the slowest rank")

    def heartbeat() -> None:  # also when nothing changed, so the caller can interrupt the run
        state = tuple(done)
        if progress is not None and (state != shown["state"] or time.monotonic() - shown["at"] >= _HEARTBEAT_S):
            shown.update(at=time.monotonic(), state=state)
            progress(*text())

    def on_message(rank: int, steps: int) -> None:
        done[rank] = steps
        heartbeat()

    t0 = time.perf_counter()
    heartbeat()
    results = launch(train_rank, W, args=(cfg,), timeout_s=timeout_s, collective_timeout_s=collective_timeout_s,
                     on_message=on_message, poll=heartbeat)
    launch_seconds = time.perf_counter() - t0
    if progress is not None:
        progress(0.92, "Training the single-process reference ...")
    torch.set_num_threads(1)  # as each rank, so the kernels match
    ref_model, ref_opt = single_process(cfg)
    ref_params = [p.detach() for p in ref_model.parameters()]
    diff = max(float((p - q).abs().max()) for r in results for p, q in zip(r["params"], ref_params, strict=True))
    loss = _full_loss(cfg.make_model(), results[0]["params"])
    reports = [{k: v for k, v in r.items() if k != "params"} for r in results]
    if progress is not None:
        progress(1.0, "Done")
    return ShardingResult(cfg, reports, ref_opt.preconditioner_bytes(), diff, loss, _full_loss(ref_model),
                          launch_seconds, extras={"reference_root_seconds": ref_opt.root_seconds})

