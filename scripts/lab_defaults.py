"""Compute what every lab shows at its opening settings, and ship it as data.

    python scripts/lab_defaults.py           # recompute all, write views/labs/defaults/lab_defaults.json.gz
    python scripts/lab_defaults.py --check   # say which opening results are missing (computes nothing)

Each lesson page with a lab is opened in Streamlit's AppTest, as a learner
opening it would see it, but with ``views.labs.common.RECORDER`` set: every
result a lab asks for at its opening settings (its defaults, nothing from a
link) is computed, on this machine's device, and written under its cache key
(see ``views/labs/stored.py``). ``tests/app/test_pages.py`` fails when a lab's
opening settings ask for a result the file does not hold (a default or a preset
changed: run this again); ``tests/app/test_lab_defaults.py`` recomputes a cheap
one and compares.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TIMEOUT_S = 3600


def _pages() -> list[str]:
    from course.lessons import load_lessons
    from views.labs import LABS

    return [x.slug for x in load_lessons() if any(lab.id in LABS for lab in x.labs)]


def _open(slug: str) -> list[str]:
    """Open the page; what went wrong on it, in words."""
    from streamlit.testing.v1 import AppTest

    from tests.app.helpers import APP, open_page

    at = open_page(AppTest.from_file(APP, default_timeout=TIMEOUT_S).run(), slug)
    problems = [f"the page raised {e.value}" for e in at.exception]
    problems += [str(e.value) for e in at.error if "lab stopped" in str(e.value)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the opening results the file lacks")
    args = parser.parse_args(argv)
    os.environ.setdefault("NATGRAD_COURSE_DB", str(Path(tempfile.mkdtemp()) / "progress.sqlite3"))

    from views.labs import common, stored

    if args.check:
        missing = {}
        for slug in _pages():
            common.MISSED.clear()
            for problem in _open(slug):
                print(f"{slug}: {problem}")
            if common.MISSED:
                missing[slug] = sorted(common.MISSED)
        for slug, keys in missing.items():
            print(f"{slug}: {len(keys)} missing", *keys, sep="\n  ")
        print("all opening results are shipped" if not missing else "run: python scripts/lab_defaults.py")
        return 1 if missing else 0

    from natgrad.devices import describe

    common.RECORDER = {}
    started = time.perf_counter()
    failed = []
    for slug in _pages():
        t0 = time.perf_counter()
        before = len(common.RECORDER)
        problems = _open(slug)
        print(f"{slug}: {len(common.RECORDER) - before} results in {time.perf_counter() - t0:.1f} s", flush=True)
        for problem in problems:
            print(f"  {problem}", flush=True)
        failed += problems
    meta = {"command": "python scripts/lab_defaults.py", "date": datetime.date.today().isoformat(),
            "device": describe().label, "seconds": round(time.perf_counter() - started, 1)}
    stored.save(common.RECORDER, meta)
    print(f"wrote {len(common.RECORDER)} results to {stored.PATH.relative_to(ROOT)} "
          f"({stored.PATH.stat().st_size / 1e6:.2f} MB) in {meta['seconds']} s")
    if failed:
        print(f"{len(failed)} lab(s) failed; their opening results are missing")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
