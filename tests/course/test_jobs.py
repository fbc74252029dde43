"""course.jobs: one run per key shared by every waiter, at most ``workers`` at once, first come
first served, cancelled only when nobody has waited for ``grace`` seconds. Real threads, no sleeps
to let things happen: computations block on events the test sets, and the clock is the test's."""

from __future__ import annotations

import threading
import time

import pytest

from course.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Cancelled, Jobs, default_workers

TIMEOUT = 5.0


def until(cond, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Blocker:
    """A computation that records its calls, reports ``fraction`` and waits for ``release``."""

    def __init__(self, value="result", fraction: float = 0.5):
        self.value, self.fraction = value, fraction
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, progress):
        self.calls += 1
        progress(self.fraction, f"{self.value}: half way")
        self.started.set()
        while not self.release.wait(0.005):
            progress(self.fraction, f"{self.value}: half way")  # where a given-up job stops
        return self.value


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def jobs(clock):
    registry = Jobs(workers=1, grace=3.0, clock=clock)
    yield registry
    registry.close()


def test_the_same_key_is_joined_and_computed_once(jobs):
    work = Blocker()
    first = jobs.submit(("spec", 1), work, label="K-FAC")
    assert work.started.wait(TIMEOUT)
    second = jobs.submit(("spec", 1), work, label="K-FAC")
    assert second is first and first.waiters == 2 and first.joined == 2
    assert (first.fraction, first.text) == (0.5, "result: half way")  # every waiter sees the one run's progress
    work.release.set()
    assert first.wait(TIMEOUT) and second.wait(TIMEOUT)
    assert first.outcome() == second.outcome() == "result"
    assert work.calls == 1
    third = jobs.submit(("spec", 1), work)  # finished: served from the results at once
    assert third.finished and third.outcome() == "result" and work.calls == 1


def test_at_most_workers_run_and_the_queue_is_first_come_first_served(clock):
    jobs = Jobs(workers=2, grace=3.0, clock=clock)
    try:
        works = [Blocker(value=i) for i in range(5)]
        order: list[int] = []
        lock = threading.Lock()

        def wrapped(i):
            def compute(progress):
                with lock:
                    order.append(i)
                return works[i](progress)
            return compute

        handles = [jobs.submit(i, wrapped(i)) for i in range(5)]
        assert works[0].started.wait(TIMEOUT) and works[1].started.wait(TIMEOUT)
        assert jobs.running() == 2 and jobs.queued() == 3
        assert [jobs.position(h) for h in handles] == [0, 0, 1, 2, 3]
        assert [h.state for h in handles] == [RUNNING, RUNNING, QUEUED, QUEUED, QUEUED]
        works[1].release.set()  # one finishes: the first in the queue starts, the others move up
        assert works[2].started.wait(TIMEOUT)
        until(lambda: jobs.position(handles[4]) == 2)
        assert [jobs.position(h) for h in handles[2:]] == [0, 1, 2]
        assert not works[3].started.is_set()
        for w in works:
            w.release.set()
        for h in handles:
            assert h.wait(TIMEOUT) and h.state == DONE
        assert order == [0, 1, 2, 3, 4] or sorted(order[:2]) == [0, 1] and order[2:] == [2, 3, 4]
    finally:
        jobs.close()


def test_a_job_nobody_waits_for_is_cancelled_after_the_grace_period_and_not_kept(jobs, clock):
    work = Blocker()
    job = jobs.submit("k", work)
    assert work.started.wait(TIMEOUT)
    jobs.leave(job)
    clock.now = 2.9  # within the grace period: the run goes on
    time.sleep(0.05)
    assert job.state == RUNNING
    clock.now = 3.0
    assert job.wait(TIMEOUT) and job.state == CANCELLED
    with pytest.raises(Cancelled):
        job.outcome()
    assert not jobs.cached("k")
    again = jobs.submit("k", work)  # a new submission starts afresh
    assert again is not job
    work.release.set()
    assert again.wait(TIMEOUT) and again.outcome() == "result" and work.calls == 2


def test_a_waiter_who_comes_back_within_the_grace_period_keeps_the_run(jobs, clock):
    work = Blocker()
    job = jobs.submit("k", work)
    assert work.started.wait(TIMEOUT)
    jobs.leave(job)  # a page rerun: leaves ...
    clock.now = 2.0
    assert jobs.submit("k", work) is job  # ... and joins again
    clock.now = 100.0
    time.sleep(0.05)
    assert job.state == RUNNING
    work.release.set()
    assert job.wait(TIMEOUT) and job.outcome() == "result" and work.calls == 1


def test_another_learner_keeps_a_run_alive_when_one_leaves(jobs, clock):
    work = Blocker()
    a = jobs.submit("k", work)
    b = jobs.submit("k", work)
    assert work.started.wait(TIMEOUT)
    jobs.leave(a)
    clock.now = 50.0
    time.sleep(0.05)
    assert b.state == RUNNING and b.waiters == 1
    work.release.set()
    assert b.wait(TIMEOUT) and b.outcome() == "result"


def test_a_queued_job_whose_waiters_left_never_runs(jobs, clock):
    blocker, never = Blocker(), Blocker(value="never")
    first = jobs.submit("first", blocker)
    assert blocker.started.wait(TIMEOUT)
    queued = jobs.submit("second", never)
    third = jobs.submit("third", Blocker(value="third"))
    assert jobs.position(third) == 2
    jobs.leave(queued)
    clock.now = 3.0
    assert jobs.position(third) == 1  # the abandoned job no longer counts ahead of it
    assert queued.wait(TIMEOUT) and queued.state == CANCELLED
    blocker.release.set()
    assert first.wait(TIMEOUT)
    jobs.leave(third)
    assert never.calls == 0


def test_a_failure_reaches_every_waiter_and_is_not_kept(jobs):
    calls = []
    gate = threading.Event()

    def broken(progress):
        calls.append(1)
        gate.wait(TIMEOUT)
        raise ValueError("bad settings")

    a = jobs.submit("k", broken)
    b = jobs.submit("k", broken)
    gate.set()
    for job in (a, b):
        assert job.wait(TIMEOUT) and job.state == FAILED
        with pytest.raises(ValueError, match="bad settings"):
            job.outcome()
    assert not jobs.cached("k")
    gate.set()
    c = jobs.submit("k", broken)
    assert c is not a and c.wait(TIMEOUT) and len(calls) == 2


def test_results_kept_are_the_newest(clock):
    jobs = Jobs(workers=1, keep=2, clock=clock)
    try:
        for k in "abc":
            assert jobs.submit(k, lambda k=k: k.upper()).wait(TIMEOUT)
        assert [jobs.cached(k) for k in "abc"] == [False, True, True]
        assert jobs.peek("c") == "C"
    finally:
        jobs.close()


def test_a_computation_that_submits_another_does_not_wait_for_itself(jobs):
    def inner():
        return 41

    def outer():
        job = jobs.submit("inner", inner)  # the only worker is busy with outer: computed in place
        return job.outcome() + 1

    job = jobs.submit("outer", outer)
    assert job.wait(TIMEOUT) and job.outcome() == 42
    assert jobs.cached("inner")


def test_compute_without_a_progress_parameter_and_defaults_are_not_taken_for_one(jobs):
    t = "kept"
    job = jobs.submit("k", lambda t=t: t)  # a default argument is not a progress slot
    assert job.wait(TIMEOUT) and job.outcome() == "kept"


@pytest.mark.parametrize(("env", "cpus", "expected"), [
    ({}, 2, 1), ({}, 16, 8), ({}, 1, 1), ({}, None, 1),
    ({"NATGRAD_COURSE_TRAININGS": "3"}, 2, 3),
    ({"NATGRAD_COURSE_TRAININGS": "0"}, 16, 8), ({"NATGRAD_COURSE_TRAININGS": "many"}, 4, 2),
])
def test_default_workers(env, cpus, expected, monkeypatch):
    if cpus is None:
        monkeypatch.setattr("os.cpu_count", lambda: None)
        assert default_workers(env) == expected
    else:
        assert default_workers(env, cpus=cpus) == expected
