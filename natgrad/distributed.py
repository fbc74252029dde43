"""Run a function on several processes with ``torch.distributed``, or join a run
started by ``torchrun``; a rank that fails or hangs ends the run with its name.

In-process launcher (tests, labs, a laptop)::

    from natgrad.distributed import launch
    results = launch(train, world_size=2, args=(50,), timeout_s=120)  # train(rank, world_size, 50)

``train`` must be a module-level function of an importable module (each rank
imports it by name) and return something picklable. Each rank gets a process
group (gloo by default, on 127.0.0.1 and a free port) before ``train`` runs; it
may call :func:`report` to send progress to the launcher's ``on_message``.

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

How :func:`launch` starts a rank: a fresh ``python -c`` process that imports
this module and then the module of ``train``, nothing else. (multiprocessing's
spawn would re-execute the launching program's ``__main__`` in every rank;
under ``streamlit run`` that is the app script itself.) The job arrives pickled
on the rank's stdin, which then stays open as a lifeline: when the launcher
closes it, or dies (even by SIGKILL), the rank sees end-of-file and exits at
once; it also exits when it is re-parented. Reports come back on the rank's
stdout; whatever the rank prints goes to stderr.

Failure handling in :func:`launch`: a rank that raises ends the run at once
(``DistributedRunError("rank 1 failed: ValueError: ...")``). A rank that hangs
leaves its peers blocked in a collective; they give up after
``collective_timeout_s`` (the process-group timeout, default half of
``timeout_s``) and report that, and the launcher names the rank that never
reported (``"rank 2 did not finish within 30 s"``). An exception raised by the
launcher's ``poll`` callback (a page that is rerun or closed) ends the run the
same way. Every rank is ended before :func:`launch` returns or raises.
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue as queue_mod
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed as dist

_COLLECTIVE = re.compile(r"timed out|timeout|connection (closed|reset|refused)|broken pipe|peer", re.IGNORECASE)
_GRACE_S = 2.0  # after a rank gives up on a peer, how long the others may still report
_POLL_S = 0.1  # how often launch() checks its ranks and calls poll()
_ENTRY = "from natgrad.distributed import _rank_main; _rank_main()"
_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding the natgrad package
_HEADER = struct.Struct("<Q")
ORPHANED_EXIT_CODE = 75  # a rank whose launcher is gone exits with this code


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


# ----------------------------------------------------------------- framing
def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _receive(stream: BinaryIO) -> Any:
    """The next pickled frame, or None at end-of-file."""
    head = _read_exactly(stream, _HEADER.size)
    if head is None:
        return None
    data = _read_exactly(stream, _HEADER.unpack(head)[0])
    return None if data is None else pickle.loads(data)


# ------------------------------------------------------------- inside a rank
class _Channel:
    """The rank's report stream to its launcher (one writer at a time)."""

    def __init__(self, stream: BinaryIO):
        self._stream, self._lock = stream, threading.Lock()

    def send(self, *item: Any) -> None:
        with self._lock:
            _send(self._stream, item)


_channel: _Channel | None = None  # set in a rank started by launch()


def report(message: Any) -> None:
    """Send ``message`` (picklable) to the launcher's ``on_message(rank, message)``.

    A no-op in a process that :func:`launch` did not start (torchrun, a plain call).
    """
    if _channel is not None:
        _channel.send("message", message)


def _exit_when_orphaned(fd: int) -> None:
    """End this rank as soon as its launcher is gone: its stdin (file descriptor
    ``fd``) reaches end-of-file (the launcher closed it, or died and the kernel
    closed it) or this process is re-parented. Daemon threads, so a rank stuck in
    a collective or a sleep exits too. ``fd`` is read with os.read, not through
    sys.stdin, whose lock a blocked daemon thread would hold at interpreter exit."""
    parent = os.getppid()

    def on_eof() -> None:
        try:
            while os.read(fd, 65536):
                pass
        finally:
            os._exit(ORPHANED_EXIT_CODE)

    def on_reparent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(ORPHANED_EXIT_CODE)

    for target in (on_eof, on_reparent):
        threading.Thread(target=target, name=f"natgrad-rank-{target.__name__}", daemon=True).start()


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rank_main() -> None:
    """Entry point of a rank process started by :func:`launch` (see the module docstring)."""
    global _channel
    stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)  # unbuffered: nothing read past the job
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the rank's own prints go to stderr
    job = _receive(stdin)
    if job is None:  # the launcher went away before sending the job
        os._exit(ORPHANED_EXIT_CODE)
    _exit_when_orphaned(stdin.fileno())
    _channel = _Channel(out)
    rank, world_size = job["rank"], job["world_size"]
    try:
        sys.path[:0] = [p for p in job["sys_path"] if p not in sys.path]
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        if job["backend"] == "nccl":
            torch.cuda.set_device(rank)
        fn = _resolve(job["module"], job["qualname"])
        args = pickle.loads(job["args"])
        dist.init_process_group(job["backend"], rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=job["collective_timeout_s"]))
        result = pickle.dumps(fn(rank, world_size, *args), protocol=pickle.HIGHEST_PROTOCOL)
        _channel.send("result", result)
    except BaseException as e:  # report everything, KeyboardInterrupt included
        _channel.send("error", _describe(e), _is_collective_error(e))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        out.close()


# --------------------------------------------------------------- the launcher
_live: set[subprocess.Popen] = set()  # rank processes started here and not yet reaped
_live_lock = threading.Lock()


def live_ranks() -> list[int]:
    """Process ids of the ranks :func:`launch` started in this process that are still running."""
    with _live_lock:
        return sorted(p.pid for p in _live if p.poll() is None)


def _importable(fn: Callable[..., Any]) -> tuple[str, str]:
    """(module, qualname) by which a rank can import ``fn``."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module == "__main__":  # ``python -m package.module``: importable under its real name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else None
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"{fn!r} must be a module-level function of an importable module: each rank imports it "
                         "by name and never runs the launching script")
    return module, qualname


def _serve(rank: int, proc: subprocess.Popen, job: dict, events: queue_mod.Queue) -> None:
    """Hand the job to one rank (its stdin stays open), then forward its reports."""
    try:
        _send(proc.stdin, job)
    except OSError:
        pass  # the rank is already gone; its exit code tells why
    try:
        while (item := _receive(proc.stdout)) is not None:
            events.put((rank, item))
    except Exception as exc:  # a torn frame: the rank died mid-report
        events.put((rank, ("broken", f"{type(exc).__name__}: {exc}")))
    events.put((rank, ("eof",)))


def _stop(procs: list[subprocess.Popen]) -> None:
    """End every rank: close its stdin (it exits at end-of-file), then terminate, then kill."""
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
    deadline = time.monotonic() + 3.0
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
    for p in procs:
        try:
            p.wait(2.0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        with _live_lock:
            _live.discard(p)


def launch(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    timeout_s: float = 300.0,
    *,
    backend: str = "gloo",
    collective_timeout_s: float | None = None,
    threads_per_rank: int | None = 1,
    on_message: Callable[[int, Any], None] | None = None,
    poll: Callable[[], None] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` new processes,
    each with an initialised process group; return the per-rank results in rank order.

    Raises :class:`DistributedRunError` naming the rank when one raises
    (immediately), exits without a result, or has not finished when the others
    have given up waiting for it or ``timeout_s`` has passed. A collective
    blocks at most ``collective_timeout_s`` (default ``timeout_s / 2``).
    ``threads_per_rank`` sets ``torch.set_num_threads`` in each process
    (None: leave torch's default, which oversubscribes small machines).

    ``on_message(rank, message)`` receives what a rank passes to :func:`report`;
    ``poll()`` is called about every 0.1 s. Both run in the calling thread, and
    an exception either raises ends every rank and propagates (this is how a
    page that is rerun or closed stops its run).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    module, qualname = _importable(fn)
    coll = collective_timeout_s if collective_timeout_s is not None else max(timeout_s / 2, 1.0)
    port = free_port()
    common = dict(world_size=world_size, module=module, qualname=qualname, args=pickle.dumps(args), port=port,
                  backend=backend, collective_timeout_s=coll, threads=threads_per_rank, sys_path=list(sys.path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
    events: queue_mod.Queue = queue_mod.Queue()
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    done: dict[int, Any] = {}
    waited: dict[int, str] = {}  # ranks that failed waiting on a peer
    first_wait = None  # when a rank first reported giving up on a peer; the group is broken then
    try:
        for r in range(world_size):
            p = subprocess.Popen([sys.executable, "-c", _ENTRY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 env=env)
            with _live_lock:
                _live.add(p)
            procs.append(p)
            threading.Thread(target=_serve, args=(r, p, dict(common, rank=r), events), daemon=True,
                             name=f"natgrad-rank-{r}-reports").start()
        while len(done) + len(waited) < world_size:
            if poll is not None:
                poll()
            now = time.monotonic()
            if now - start > timeout_s or (first_wait is not None and now - first_wait > _GRACE_S):
                break
            try:
                rank, item = events.get(timeout=_POLL_S)
            except queue_mod.Empty:
                continue
            kind = item[0]
            if kind == "message":
                if on_message is not None:
                    on_message(rank, item[1])
            elif kind == "result":
                done[rank] = pickle.loads(item[1])
            elif kind == "error" and item[2]:
                waited[rank] = item[1]
                first_wait = first_wait or time.monotonic()
            elif kind == "error":
                raise DistributedRunError(f"rank {rank} failed: {item[1]}")
            elif rank not in done and rank not in waited:  # its report stream ended without a result
                try:
                    code = procs[rank].wait(2.0)
                except subprocess.TimeoutExpired:
                    code = None
                how = f"process exited with code {code}" if code is not None else "process closed its reports"
                extra = f" ({item[1]})" if kind == "broken" else ""
                raise DistributedRunError(f"rank {rank} failed: {how} without reporting a result{extra}")
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
