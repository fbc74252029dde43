"""Process facts read from the operating system (Linux /proc), independent of
what natgrad.distributed believes about its ranks."""

from __future__ import annotations

import os
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a zombie has exited;
    only its parent has not collected the exit code yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children(pid: int | None = None) -> list[int]:
    """Live processes whose parent is ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return sorted(out)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return sorted(out)


def wait_gone(pids: list[int], within_s: float) -> list[int]:
    """The pids still alive after waiting up to ``within_s`` seconds for all to end."""
    deadline = time.monotonic() + within_s
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
