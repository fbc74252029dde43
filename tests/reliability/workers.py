"""Module-level rank functions for the process tests (each rank imports them by name)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

APP_MODULES = ("streamlit", "course", "views", "app")


def write_pid_and_sleep(rank: int, world_size: int, folder: str) -> None:
    """Announce this rank's pid in ``folder``, then hang (a rank stuck forever)."""
    Path(folder, f"rank{rank}.pid").write_text(str(os.getpid()))
    time.sleep(3600)


def loaded_app_modules(rank: int, world_size: int) -> list[str]:
    """The app's own packages (and streamlit) that this rank has imported: should be none."""
    return sorted({m.split(".")[0] for m in sys.modules} & set(APP_MODULES))
