"""Run a function on several processes with ``torch.distributed``, or join a run
started by ``torchrun``; a rank that fails or hangs ends the run with its name.

In-process launcher (tests, labs, a laptop)::

    from natgrad.distributed import launch
    results = launch(train, world_size=2, args=(50,), timeout_s=120)  # train(rank, world_size, 50)

``train`` must be a module-level function (it is pickled by name into spawned
processes) and return something picklable. Each rank gets a process group
(gloo by default, on 127.0.0.1 and a free port) before ``train`` runs.

torchrun, one machine with 4 processes (``-m`` so the repository root is on
the path)::

    torchrun --standalone --nproc-per-node=4 -m natgrad.examples.shampoo_torchrun --steps 100

torchrun, two machines with 8 GPUs each; run on every machine, ``NODE_RANK`` 0
on the machine whose address is ``MASTER``::

    torchrun --nnodes=2 --nproc-per-node=8 --node-rank=$NODE_RANK \\
        --master-addr=$MASTER --master-port=29500 -m natgrad.examples.shampoo_torchrun --steps 100

or with elastic rendezvous (no node ranks)::

    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=$MASTER:29500 \\
        --rdzv-id=shampoo -m natgrad.examples.shampoo_torchrun --steps 100

Under torchrun a script calls :func:`init_from_env`, which reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` and picks
NCCL when CUDA is available, else gloo.

Failure handling in :func:`launch`: a rank that raises ends the run at once
(``DistributedRunError("rank 1 failed: ValueError: ...")``). A rank that hangs
leaves its peers blocked in a collective; they give up after
``collective_timeout_s`` (the process-group timeout, default half of
``timeout_s``) and report that, and the launcher names the rank that never
reported (``"rank 2 did not finish within 30 s"``). Every process is
terminated before the error is raised.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import re
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

_COLLECTIVE = re.compile(r"timed out|timeout|connection (closed|reset|refused)|broken pipe|peer", re.IGNORECASE)


_GRACE_S = 2.0  # after a rank gives up on a peer, how long the others may still report


class DistributedRunError(RuntimeError):
    """A launched run failed; the message names the rank(s) and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the process group described by torchrun's environment variables.

    Returns ``(rank, world_size)``; ``(0, 1)`` without initialising anything
    when ``WORLD_SIZE`` is unset (a plain ``python`` run). ``backend`` defaults
    to NCCL when CUDA is available (each process then uses GPU ``LOCAL_RANK``),
    else gloo.
    """
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def _describe(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def _is_collective_error(e: BaseException) -> bool:
    """Errors a rank gets because a *peer* failed or hung (timeouts, closed connections)."""
    return isinstance(e, getattr(dist, "DistError", ())) or bool(_COLLECTIVE.search(str(e)))


def _entry(fn, rank, world_size, args, port, backend, collective_timeout_s, threads, results) -> None:
    try:
        if threads:
            torch.set_num_threads(threads)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s))
        out = fn(rank, world_size, *args)
        results.put((rank, True, pickle.dumps(out), False))
    except BaseException as e:  # report everything, KeyboardInterrupt included
        results.put((rank, False, _describe(e), _is_collective_error(e)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stop(procs: list) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def launch(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    timeout_s: float = 300.0,
    *,
    backend: str = "gloo",
    collective_timeout_s: float | None = None,
    threads_per_rank: int | None = 1,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes,
    each with an initialised process group; return the per-rank results in rank order.

    Raises :class:`DistributedRunError` naming the rank when one raises
    (immediately), exits without a result, or has not finished when the others
    have given up waiting for it or ``timeout_s`` has passed. A collective
    blocks at most ``collective_timeout_s`` (default ``timeout_s / 2``).
    ``threads_per_rank`` sets ``torch.set_num_threads`` in each process
    (None: leave torch's default, which oversubscribes small machines).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    coll = collective_timeout_s if collective_timeout_s is not None else max(timeout_s / 2, 1.0)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, args, port, backend, coll, threads_per_rank, results),
                         name=f"natgrad-rank-{r}", daemon=True) for r in range(world_size)]
    start = time.monotonic()
    for p in procs:
        p.start()
    done: dict[int, Any] = {}
    waited: dict[int, str] = {}  # ranks that failed waiting on a peer
    first_wait = None  # when a rank first reported giving up on a peer; the group is broken then
    try:
        while len(done) + len(waited) < world_size:
            now = time.monotonic()
            if now - start > timeout_s or (first_wait is not None and now - first_wait > _GRACE_S):
                break
            try:
                rank, ok, payload, secondary = results.get(timeout=0.05)
            except queue_mod.Empty:
                for r, p in enumerate(procs):
                    if r not in done and r not in waited and p.exitcode is not None:
                        try:  # its report may still be in the pipe
                            rank, ok, payload, secondary = results.get(timeout=1.0)
                            break
                        except queue_mod.Empty:
                            raise DistributedRunError(
                                f"rank {r} failed: process exited with code {p.exitcode} without reporting a result"
                            ) from None
                else:
                    continue
            if ok:
                done[rank] = pickle.loads(payload)
            elif secondary:
                waited[rank] = payload
                first_wait = first_wait or time.monotonic()
            else:
                raise DistributedRunError(f"rank {rank} failed: {payload}")
        if len(done) == world_size:
            return [done[r] for r in range(world_size)]
        missing = [r for r in range(world_size) if r not in done and r not in waited]
        elapsed = time.monotonic() - start
        gave_up = ""
        if waited:
            first = min(waited)
            gave_up = (f"; rank{'s' if len(waited) > 1 else ''} {', '.join(map(str, sorted(waited)))} gave up "
                       f"waiting in a collective (rank {first}: {waited[first]})")
        if missing:
            who = ", ".join(map(str, missing))
            raise DistributedRunError(
                f"rank{'s' if len(missing) > 1 else ''} {who} did not finish within {elapsed:.0f} s{gave_up}")
        raise DistributedRunError(f"no rank failed on its own, but{gave_up[1:]}")
    finally:
        _stop(procs)
