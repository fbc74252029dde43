"""The settle rule of scripts/app_timing.py, on recorded page states: a page has settled once no run is
going, no figure waits to be drawn and nothing has changed for QUIET_MS; its time is its last change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("app_timing", ROOT / "scripts" / "app_timing.py")
app_timing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app_timing)
QUIET = app_timing.QUIET_MS


class Recorded:
    """A page whose observer state is fixed: (runs, running, now, last change, pending elements)."""

    def __init__(self, runs, running, now, last_change, pending=0):
        self.state = [runs, running, now, last_change, pending]

    def evaluate(self, script):
        assert script == app_timing.PENDING
        return self.state


def test_a_figure_drawn_after_the_run_ended_counts():
    # the run ended at 1000 ms, plotly drew its figures until 2400 ms: the page settled at 2400
    page = Recorded([[True, 300.0], [False, 1000.0]], False, 2400.0 + QUIET + 1, 2400.0)
    assert app_timing._settled(page, 0.0) == 2400.0


@pytest.mark.parametrize("state", [
    ([[True, 300.0]], True, 9000.0, 400.0, 0),  # a run is still going
    ([[True, 300.0], [False, 1000.0]], False, 9000.0, 1000.0, 2),  # two figures not drawn yet
    ([[True, 300.0], [False, 1000.0]], False, 1000.0 + QUIET - 1, 1000.0, 0),  # not quiet for long enough
    ([], False, 2 * QUIET, 100.0, 0),  # no run seen yet, and too early to say there will be none
])
def test_not_settled(state):
    assert app_timing._settled(Recorded(*state), 0.0) is None


def test_a_run_too_short_to_show_its_status_is_timed_by_the_last_change():
    page = Recorded([], False, 3 * QUIET + 200.0, 700.0)
    assert app_timing._settled(page, 0.0) == 700.0


def test_only_what_happened_after_the_click_counts():
    # a lab pressed at 5000 ms: the page's own load (runs before 5000) is not its time
    page = Recorded([[True, 300.0], [False, 1000.0], [True, 5600.0], [False, 6100.0]], False, 7000.0, 6100.0)
    assert app_timing._settled(page, 5000.0) - 5000.0 == 1100.0
