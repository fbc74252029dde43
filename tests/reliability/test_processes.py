"""Rank processes of the sharding lab: an interrupted run ends its ranks, one
sharded run at a time per server, ranks outlive neither their launcher (even a
SIGKILLed one) nor run the launching script (Streamlit's ``__main__`` is app.py).

Process liveness is read from /proc (tests/reliability/procs.py), not from
natgrad's own bookkeeping."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from natgrad import sharding
from natgrad.distributed import launch, live_ranks
from natgrad.sharding import ShardingBusy, ShardingConfig, run_sharded
from tests.conftest import ROOT
from tests.reliability.procs import alive, children, wait_gone
from tests.reliability.workers import loaded_app_modules

CFG = ShardingConfig(world_size=2, steps=10)


def _stop_at_once(frac: float, text: str) -> None:
    raise StopException()


def _held_run(holding: threading.Event, release: threading.Event, outcome: dict) -> threading.Thread:
    """A sharded run in another thread (another learner's session) that holds the
    server's slot from its first progress call until ``release``, then is stopped."""

    def progress(frac: float, text: str) -> None:
        holding.set()
        release.wait(120)
        raise StopException()

    def target() -> None:
        try:
            run_sharded(CFG, progress=progress)
        except BaseException as exc:  # noqa: BLE001 - recorded for the caller's assertions
            outcome["first"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t


def test_an_interrupted_run_ends_its_ranks():
    """Streamlit interrupts a script (page rerun, button pressed again, tab closed)
    by raising StopException/RerunException from the next st call: in the lab that
    is the progress bar. The run's ranks must end with it, not keep training."""
    seen: list[int] = []
    others = set(children())  # processes other tests keep for the session (a browser, a server) are not ranks

    def progress(frac: float, text: str) -> None:
        seen.extend(p for p in children() if p not in seen and p not in others)
        if "ready" in text or "Training" in text:  # at least one rank is up and reporting
            raise StopException()

    with pytest.raises(StopException):
        run_sharded(CFG, progress=progress)
    assert seen, "no rank process was ever seen"
    assert wait_gone(seen, within_s=1.0) == [], "ranks of the interrupted run are still running"
    assert live_ranks() == [] and sharding.running_since() == []


def test_progress_is_called_while_ranks_start_so_a_page_can_stop_them():
    """Ranks take seconds to import torch and report nothing meanwhile; the caller
    must still get control often (a page can only be interrupted in an st call)."""
    calls: list[float] = []

    def progress(frac: float, text: str) -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:  # the third call, still while starting
            raise StopException()

    with pytest.raises(StopException):
        run_sharded(CFG, progress=progress)
    assert len(calls) == 3 and live_ranks() == []


def test_one_sharded_run_at_a_time_and_the_second_is_told_to_wait():
    holding, release, outcome = threading.Event(), threading.Event(), {}
    t = _held_run(holding, release, outcome)
    try:
        assert holding.wait(60)
        before = children()
        with pytest.raises(ShardingBusy, match=r"already going on here; the current one started \d+ s ago"):
            run_sharded(CFG, progress=_stop_at_once)
        assert children() == before, "the refused run started processes"
    finally:
        release.set()
        t.join(60)
    assert isinstance(outcome.get("first"), StopException)
    assert sharding.running_since() == [] and live_ranks() == []


def test_the_lab_tells_a_second_learner_to_wait(tmp_path, monkeypatch):
    from course.progress import ENV_VAR
    from tests.app.helpers import run_lab

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))
    holding, release, outcome = threading.Event(), threading.Event(), {}
    t = _held_run(holding, release, outcome)
    try:
        assert holding.wait(60)
        # settings no other test asks for: this process's job registry may already hold another
        # test's result, which would be shown without starting anything
        at = run_lab("distributed-shampoo", "sh", {"sh-ranks": 2, "sh-steps": 10, "sh-block": 16})
        warnings = [w.value for w in at.warning]
        assert any(w.startswith("Please wait: another sharded run is using this server's processes") for w in warnings), \
            warnings
        assert not at.error and not at.exception
    finally:
        release.set()
        t.join(60)
    assert isinstance(outcome.get("first"), StopException) and live_ranks() == []


PARENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from natgrad.distributed import launch
    from tests.reliability.workers import write_pid_and_sleep
    launch(write_pid_and_sleep, 2, args=({folder!r},), timeout_s=3600)
""")


def test_ranks_exit_when_their_launcher_is_killed(tmp_path):
    """SIGKILL leaves no chance to clean up: the ranks must notice on their own."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=str(ROOT), folder=str(tmp_path))])
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("rank*.pid"))) < 2:
            assert parent.poll() is None, "the launcher ended early"
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.2)
        ranks = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
        assert all(alive(p) for p in ranks)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    left = wait_gone(ranks, within_s=10.0)
    for p in left:  # do not leak them into the rest of the suite
        subprocess.run(["kill", "-9", str(p)], check=False)
    assert left == [], f"ranks {left} outlived their SIGKILLed launcher"


def test_ranks_never_run_the_launching_script(tmp_path, monkeypatch):
    """Under ``streamlit run`` the main module is a stand-in whose __file__ is app.py
    (Streamlit's script runner installs it). A rank must not execute it: no
    streamlit, course or views in the rank, and no progress database opened."""
    db = tmp_path / "progress.sqlite3"
    monkeypatch.setenv("NATGRAD_COURSE_DB", str(db))
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(ROOT / "app.py")
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    [modules] = launch(loaded_app_modules, 1, timeout_s=120)
    assert modules == []
    assert not db.exists(), "a rank opened the progress database"
