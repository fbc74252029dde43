"""Make a file really unwritable for a while (not a mock): chmod for ordinary
users; root ignores permissions, so for root the file is made immutable with
``chattr +i``. Where neither works the test fails and says why."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _writable(path: Path) -> bool:
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    path = Path(path)
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        undo = lambda: path.chmod(mode)  # noqa: E731
    else:
        chattr = shutil.which("chattr")
        assert chattr, "running as root without chattr: cannot make a file read-only for this test"
        done = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"chattr +i {path} failed ({done.stderr.strip()}): cannot make it read-only"
        undo = lambda: subprocess.run([chattr, "-i", str(path)], check=True)  # noqa: E731
    try:
        assert not _writable(path), f"{path} is still writable"
        yield
    finally:
        undo()
