"""Runs shared between learners, and a fair queue (no Streamlit, no torch: plain threads).

A :class:`Jobs` registry belongs to the server process. ``submit(key, compute)``
either joins the job already queued or running for the same ``key`` (every
learner waiting on it sees the same progress and gets the same result) or
queues a new one. At most ``workers`` jobs compute at once, in worker threads,
first come first served; a queued job knows its place (:meth:`Jobs.position`).

A waiter that goes away calls :meth:`Jobs.leave`. A job nobody waits for is
cancelled, but only after ``grace`` seconds, so that a page that reruns (and
joins again at once) keeps its run. ``compute(progress)`` reports with
``progress(fraction, text)``; that call raises :class:`Cancelled` when the job
has been given up, so a computation that reports often also stops soon.
Finished results are kept (the newest ``keep``); a failure or a cancellation is
not kept, so the next submission tries again.

    jobs = Jobs(workers=2)
    job = jobs.submit(spec, lambda progress: train(spec, progress), label="K-FAC")
    while not job.wait(0.25):
        show(job.fraction, job.text, jobs.position(job))
    jobs.leave(job)
    value = job.outcome()  # the result, or the job's exception re-raised
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)

ENV_WORKERS = "NATGRAD_COURSE_TRAININGS"  # how many trainings the server runs at once
GRACE_S = 3.0  # how long a job nobody waits for is kept before it is cancelled


def default_workers(environ: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """``$NATGRAD_COURSE_TRAININGS`` when it is a positive integer, else half the CPU cores (at least 1)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_WORKERS, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n > 0:
            return n
        log.warning("%s=%r is not a positive integer; using half the CPU cores", ENV_WORKERS, raw)
    cpus = os.cpu_count() if cpus is None else cpus
    return max(1, (cpus or 1) // 2)


class Cancelled(Exception):
    """Raised inside a computation (by its ``progress`` call) once nobody waits for it."""


QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class Job:
    """One computation for one key, shared by everyone who submitted that key."""

    def __init__(self, key: Hashable, compute: Callable[..., Any], label: str, ticket: int):
        self.key, self.label, self.ticket = key, label, ticket
        self._compute = compute
        self.state = QUEUED
        self.fraction = 0.0
        self.text = ""
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiters = 0  # sessions waiting now
        self.joined = 0  # sessions that ever submitted this key while it was pending
        self.orphaned_at: float | None = None  # when the last waiter left
        self._done = threading.Event()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (or ``timeout`` seconds); True when finished."""
        return self._done.wait(timeout)

    def outcome(self) -> Any:
        """The result; the job's own exception re-raised when it failed; :class:`Cancelled` when given up."""
        if not self.finished:
            raise RuntimeError(f"job {self.label or self.key!r} has not finished")
        if self.state == FAILED:
            raise self.error  # type: ignore[misc]
        if self.state == CANCELLED:
            raise Cancelled(f"{self.label or self.key!r} was cancelled: nobody was waiting for it")
        return self.result

    def __repr__(self) -> str:
        return f"Job({self.label or self.key!r}, {self.state}, {self.fraction:.0%}, waiters={self.waiters})"


def _takes_progress(compute: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(compute).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_POSITIONAL or (p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                              and p.default is p.empty) for p in params)


class Jobs:
    """The process-wide registry: shared jobs, a FIFO queue, ``workers`` worker threads.

    ``clock`` (monotonic seconds) and ``grace`` are parameters so that tests can
    drive the cancellation rule without sleeping.
    """

    def __init__(self, workers: int | None = None, keep: int = 64, grace: float = GRACE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.keep, self.grace, self.clock = keep, grace, clock
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._active: dict[Hashable, Job] = {}  # queued or running, by key
        self._results: OrderedDict[Hashable, Any] = OrderedDict()  # finished, newest last
        self._tickets = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False

    # ------------------------------------------------------------ for sessions
    def submit(self, key: Hashable, compute: Callable[..., Any], label: str = "") -> Job:
        """The job for ``key``: a finished one from the results, the pending one (joined), or a new one.

        The caller becomes one of the job's waiters and must call :meth:`leave` when it
        stops waiting (a finished job needs no leave, but it does no harm).
        ``compute`` takes ``progress(fraction, text)`` or nothing.
        """
        if threading.current_thread() in self._threads:  # a job's own computation asks for another:
            return self._inline(key, compute, label)  # queueing it behind itself could deadlock
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._finished(key, compute, label, DONE, self._results[key])
            job = self._active.get(key)
            if job is None:
                job = Job(key, compute, label, next(self._tickets))
                self._active[key] = job
                self._queue.append(job)
                self._start_workers()
                self._lock.notify_all()
            job.waiters += 1
            job.joined += 1
            job.orphaned_at = None
            return job

    def _finished(self, key, compute, label, state, result=None, error=None) -> Job:
        job = Job(key, compute, label, -1)
        job.state, job.result, job.error, job.fraction = state, result, error, 1.0
        job._done.set()
        return job

    def _inline(self, key: Hashable, compute: Callable[..., Any], label: str) -> Job:
        with self._lock:
            if key in self._results:
                return self._finished(key, compute, label, DONE, self._results[key])
        try:
            value = compute(lambda fraction=0.0, text="": None) if _takes_progress(compute) else compute()
        except Exception as exc:  # noqa: BLE001 - the caller gets it from outcome()
            return self._finished(key, compute, label, FAILED, error=exc)
        with self._lock:
            self._keep(key, value)
        return self._finished(key, compute, label, DONE, value)

    def leave(self, job: Job) -> None:
        """This waiter no longer waits; the job is cancelled ``grace`` seconds after its last waiter left."""
        with self._lock:
            if job.finished or job.waiters <= 0:
                return
            job.waiters -= 1
            if job.waiters == 0:
                job.orphaned_at = self.clock()
                self._lock.notify_all()

    def position(self, job: Job) -> int:
        """0 while the job runs (or has finished), else its place in the queue (1: next to start)."""
        with self._lock:
            self._purge()
            if job.state != QUEUED:
                return 0
            return 1 + sum(1 for j in self._queue if j.ticket < job.ticket)

    def running(self) -> int:
        with self._lock:
            return sum(1 for j in self._active.values() if j.state == RUNNING)

    def queued(self) -> int:
        with self._lock:
            self._purge()
            return len(self._queue)

    def cached(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._results

    def peek(self, key: Hashable) -> Any:
        """The finished result for ``key`` (KeyError when there is none); counts as a use."""
        with self._lock:
            self._results.move_to_end(key)
            return self._results[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` as the finished result for ``key`` (e.g. one computed elsewhere)."""
        with self._lock:
            self._keep(key, value)

    def close(self) -> None:
        """Stop the worker threads once they are idle (tests); pending jobs are cancelled."""
        with self._lock:
            self._closed = True
            for job in list(self._queue):
                self._finish(job, CANCELLED)
            self._queue.clear()
            self._lock.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    # ------------------------------------------------------------ internals
    def _expired(self, job: Job) -> bool:
        return job.waiters == 0 and job.orphaned_at is not None and self.clock() - job.orphaned_at >= self.grace

    def _purge(self) -> None:
        """Cancel queued jobs whose waiters all left more than ``grace`` ago (lock held)."""
        for job in [j for j in self._queue if self._expired(j)]:
            self._queue.remove(job)
            self._finish(job, CANCELLED)

    def _give_up(self, job: Job) -> None:
        """Take a running job out of the registry at once, so that a new submission of its key
        starts afresh instead of joining a run that is stopping (lock held)."""
        if self._active.get(job.key) is job:
            del self._active[job.key]

    def _finish(self, job: Job, state: str, result: Any = None, error: BaseException | None = None) -> None:
        job.state, job.result, job.error = state, result, error
        if state == DONE:
            job.fraction = 1.0
            self._keep(job.key, result)
        if self._active.get(job.key) is job:
            del self._active[job.key]
        job._done.set()

    def _keep(self, key: Hashable, value: Any) -> None:
        self._results[key] = value
        self._results.move_to_end(key)
        while len(self._results) > self.keep:
            self._results.popitem(last=False)

    def _start_workers(self) -> None:
        alive = [t for t in self._threads if t.is_alive()]
        self._threads = alive
        for i in range(self.workers - len(alive)):
            t = threading.Thread(target=self._work, name=f"natgrad-job-{len(alive) + i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _next(self) -> Job | None:
        with self._lock:
            while True:
                self._purge()
                if self._closed:
                    return None
                if self._queue:
                    job = self._queue.popleft()
                    job.state = RUNNING
                    return job
                # wake up now and then: a queued orphan may expire without anyone calling in
                self._lock.wait(timeout=max(self.grace, 0.05))

    def _work(self) -> None:
        while (job := self._next()) is not None:
            self._run(job)

    def _progress(self, job: Job) -> Callable[[float, str], None]:
        def progress(fraction: float = 0.0, text: str = "") -> None:
            with self._lock:
                job.fraction = min(max(float(fraction), 0.0), 1.0)
                job.text = str(text)
                if self._expired(job) or self._closed:
                    self._give_up(job)
                    raise Cancelled(f"nobody waits for {job.label or job.key!r} any more")

        return progress

    def _run(self, job: Job) -> None:
        compute = job._compute
        try:
            value = compute(self._progress(job)) if _takes_progress(compute) else compute()
        except Cancelled:
            with self._lock:
                self._finish(job, CANCELLED)
            return
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter, never lost in a thread
            log.debug("job %r failed", job, exc_info=True)
            with self._lock:
                self._finish(job, FAILED, error=exc)
            return
        with self._lock:
            self._finish(job, DONE, result=value)
