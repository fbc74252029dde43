"""The real server under load and abuse, in headless Chromium:

* six learners (six browser sessions) press Train in the damping lab at the
  same moment, each with another damping (six distinct runs, queued by the
  server) or all with the same (one run, shared): every run finishes without
  an error, each learner's progress stays theirs, and learners of a shared run
  are told so;
* the sharding lab pressed again and again never piles up rank processes, a
  second learner is told to wait, and the ranks never run app.py;
* a learner name full of Markdown and HTML is drawn as the characters typed.

The figures (sessions, slowest completion, processes alive afterwards) are
printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest

from course.lessons import load_lessons
from course.session import MAX_LEARNER_LEN
from natgrad.sharding import MAX_RANKS
from tests.browser.test_browser import (
    question_forms,
    results_of_a_run,
    scroll_to,
    settle,
    shown_value,
    wait_for_results,
)
from tests.reliability.procs import descendants

SESSIONS = 6
LESSON = next(x for x in load_lessons() if x.slug == "damping")
TRAIN_TIMEOUT_S = 600


def _new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    return context, page


def _set_learner(page, name: str) -> None:
    box = page.get_by_role("textbox", name="Learner name")
    box.fill(name)
    box.press("Enter")
    settle(page)


def _lab_form(page, button: str):
    return page.locator('[data-testid="stForm"]').filter(has=page.get_by_role("button", name=button))


def _clean(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    html = page.content()
    assert "Traceback" not in html and "lab stopped" not in html


def _answer_one_question(pages, names, q, index) -> None:
    right = next(i for i, o in enumerate(q.options) if o.correct)
    wrong = next(i for i, o in enumerate(q.options) if not o.correct)
    for i, page in enumerate(pages):  # each learner answers one question, right or wrong by turn
        _set_learner(page, names[i])
        form = question_forms(page).nth(index)
        scroll_to(page, form)
        form.locator('[role="radiogroup"] label').nth(right if i % 2 == 0 else wrong).click()
        form.get_by_role("button", name="Check answer").click()
        page.get_by_text("Correct." if i % 2 == 0 else "Not quite. Try again.",
                         exact=i % 2 == 0).first.wait_for()


def _move(thumb, notches: int) -> None:
    thumb.focus()
    for _ in range(abs(notches)):
        thumb.press("ArrowRight" if notches > 0 else "ArrowLeft")


@pytest.mark.parametrize("same", [False, True], ids=["distinct settings", "identical settings"])
def test_six_learners_train_at_once(server, browser, same):
    """Six learners press Train in the damping lab at the same moment: with six distinct
    dampings, 50 steps each (six runs, queued; each learner's progress stays theirs), or all with
    the same settings, 200 steps (one run, joined by all six, who see it as shared)."""
    index, q = next((i, q) for i, q in enumerate(LESSON.questions) if q.kind == "single")
    sessions = [_new_page(browser) for _ in range(SESSIONS)]
    pages = [p for _, p in sessions]
    names = [f"concurrent learner {i}" for i in range(SESSIONS)]
    try:
        for page in pages:
            page.goto(f"{server['url']}/{LESSON.slug}")
            settle(page)
        if not same:
            _answer_one_question(pages, names, q, index)
        dampings = []
        for i, page in enumerate(pages):
            form = _lab_form(page, "Train")
            scroll_to(page, form)
            steps = form.get_by_role("slider").nth(0)
            if not same:  # six runs: 200 -> 50 steps each; one shared run keeps its 200, long enough
                _move(steps, -2)  # for the learners' pages to show it as shared while it trains
            assert shown_value(steps) == ("200" if same else "50")
            # "K-FAC initial damping λ": distinct 0, +1, -1, +2, ... notches; identical: all -3 (a run no
            # distinct learner makes, so that nothing is cached from the other case)
            offset = -3 if same else (i + 1) // 2 * (1 if i % 2 else -1)
            thumb = form.get_by_role("slider").nth(1)
            _move(thumb, offset)
            dampings.append(shown_value(thumb))
        assert None not in dampings, dampings
        assert len(set(dampings)) == (1 if same else SESSIONS), dampings
        started = {}
        for i, page in enumerate(pages):  # then all press Train, as close together as a driver can
            _lab_form(page, "Train").get_by_role("button", name="Train").click()
            started[i] = time.monotonic()
        finished: dict[int, float] = {}
        shared_seen = queued_seen = 0
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        while len(finished) < SESSIONS and time.monotonic() < deadline:
            for i, page in enumerate(pages):
                if i in finished:
                    continue
                if results_of_a_run(page):
                    finished[i] = time.monotonic() - started[i]
                    continue
                status = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="K-FAC:")
                text = " ".join(status.all_inner_texts())  # no waiting: the caption goes when its run ends
                shared_seen += "shared with" in text
                queued_seen += "in the queue" in text
            time.sleep(0.25)
        assert len(finished) == SESSIONS, f"only sessions {sorted(finished)} finished within {TRAIN_TIMEOUT_S} s"
        losses = set()
        for i, page in enumerate(pages):
            settle(page)
            _clean(page)
            losses.add(page.locator('[data-testid="stMetric"]').filter(has_text="ms/step").first.inner_text())
            if not same:
                side = page.locator('[data-testid="stSidebar"]').inner_text()
                done = re.search(rf"{re.escape(names[i])}: (\d+)% of the course done", side)
                assert done, side[:500]
                assert (int(done.group(1)) > 0) == (i % 2 == 0), side[:500]
        alive = descendants(server["pid"])
        print(f"\n{SESSIONS} learners pressed Train in the damping lab ({200 if same else 50} steps) with "
              f"{'identical' if same else 'distinct'} settings; completion times "
              f"{', '.join(f'{finished[i]:.1f}' for i in range(SESSIONS))} s; slowest {max(finished.values()):.1f} s; "
              f"progress polls that said shared: {shared_seen}, queued: {queued_seen}; "
              f"processes alive under the server afterwards: {len(alive)}")
        assert alive == []
        if same:
            assert len(losses) == 1, losses  # one run, one result for all
            assert shared_seen > 0, "no learner was told the run was shared"
        else:
            assert len(losses) == SESSIONS
    finally:
        for context, _ in sessions:
            context.close()
    if not same:
        with sqlite3.connect(server["db"]) as conn:
            rows = conn.execute("SELECT learner, lesson, question, correct FROM attempts WHERE learner LIKE "
                                "'concurrent learner %'").fetchall()
        assert sorted(rows) == sorted((names[i], LESSON.slug, q.id, int(i % 2 == 0)) for i in range(SESSIONS))


def _ranks_started(server_pid: int, before: set[int], ranks: int, timeout_s: float = 120) -> set[int]:
    """The processes of a newly launched run: ``ranks`` live processes under the server that were not
    there before (``before``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = set(descendants(server_pid)) - before
        if len(new) >= ranks:
            return new
        time.sleep(0.05)
    raise AssertionError(f"no run of {ranks} new rank processes started within {timeout_s:.0f} s")


def test_pressing_the_sharding_lab_again_and_again_never_piles_up_ranks(server, browser):
    """A learner presses the sharding lab's button again while their run is going, four times, each
    time with another block size (so that no press is answered from the cache). A press inside a lab
    (a fragment) does not interrupt the lab's run in progress: Streamlit holds it until that run has
    ended, so each press starts its own run once the ranks of the run before are gone, and the server
    never holds more than one run's ranks. A second learner who presses meanwhile is told to wait;
    no rank runs app.py."""
    (ca, a), (cb, b) = _new_page(browser), _new_page(browser)
    counts: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            counts.append(len(descendants(server["pid"])))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    launch = "Launch the ranks and train"
    ranks = 2  # the lab's default
    try:
        for page in (a, b):
            page.goto(f"{server['url']}/distributed-shampoo")
            settle(page)
        form = _lab_form(a, launch)
        scroll_to(a, form)
        assert shown_value(form.get_by_role("slider").nth(0)) == str(ranks)
        steps = form.get_by_role("slider").nth(1)
        _move(steps, 1)  # 20 -> 50: the opening settings' result is shipped and would launch nothing
        assert shown_value(steps) == "50"
        block = form.get_by_role("slider").nth(2)
        # the second learner: 10 steps in blocks of 256, settings nobody asks for (a cached result would
        # launch nothing; test_browser's sharding test runs 10 steps in blocks of 64)
        form_b = _lab_form(b, launch)
        scroll_to(b, form_b)
        _move(form_b.get_by_role("slider").nth(1), -1)
        _move(form_b.get_by_role("slider").nth(2), 2)
        assert [shown_value(form_b.get_by_role("slider").nth(i)) for i in (1, 2)] == ["10", "256"]
        sampler.start()
        before = set(descendants(server["pid"]))
        launched, blocks = [], []
        for notches in (0, -1, -1, 3):  # block size 64, 32, 16, 128: four runs nobody has made yet
            _move(block, notches)
            blocks.append(shown_value(block))
            started = time.monotonic()
            form.get_by_role("button", name=launch).click()
            # this press's own ranks (after the run before has ended); press again while they run
            new = _ranks_started(server["pid"], before, ranks)
            launched.append(time.monotonic() - started)
            before |= new
        assert len(set(blocks)) == 4, blocks
        _lab_form(b, launch).get_by_role("button", name=launch).click()  # meanwhile, a second learner
        b.get_by_text("Please wait: another sharded run is using this server's processes").wait_for()
        wait_for_results(a, "max |sharded − single process|", 300)
        settle(a)
        _clean(a)
        _clean(b)
        assert "The sharded run stopped" not in a.content()
        stop.set()
        sampler.join()
        time.sleep(1)
        alive = descendants(server["pid"])
        peak = max(counts)
        print(f"\nsharding lab pressed 4 times, each while the run before was going; each press's ranks started "
              f"{', '.join(f'{t:.1f}' for t in launched)} s after it: at most {peak} processes under the server at once "
              f"({len(counts)} samples); alive after the run: {len(alive)}")
        assert 0 < peak <= ranks <= MAX_RANKS  # the default 2 ranks, never two runs' worth
        assert alive == []
        log = server["log"].read_text()
        assert "bare mode" not in log and "ScriptRunContext" not in log, "a rank ran app.py"
    finally:
        stop.set()
        ca.close()
        cb.close()


def test_a_name_full_of_markup_is_drawn_as_typed(server, page):
    # an image, a colour directive, HTML and maths (each one live when drawn unescaped), within the
    # MAX_LEARNER_LEN characters a name keeps, so the whole name is the learner's
    name = "![](//127.0.0.1:9/p) :red[r] <b>b</b>$x$"
    assert len(name) <= MAX_LEARNER_LEN
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(f"{server['url']}/progress")
    settle(page)
    _set_learner(page, name)
    page.get_by_text("Learner:").first.wait_for()
    assert page.locator('img[src*="127.0.0.1:9"]').count() == 0
    assert not [u for u in fetched if "127.0.0.1:9" in u]
    shown = page.locator('[data-testid="stMain"]').inner_text() + page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Names keep at most" not in shown
    assert f"Learner: {name}" in shown
    assert f"{name}: 0% of the course done" in shown
    assert f"Yes, delete every saved answer of {name}" in shown
    assert page.locator('[data-testid="stMain"] .katex').count() == 0
    _clean(page)
    # the home page's "Learner" metric, reached through the navigation (the same session keeps the name)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Home", exact=True).click()
    page.get_by_role("heading", name="Learning path").wait_for()
    settle(page)
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Learner").first
    assert name in metric.inner_text()
    assert page.locator('img[src*="127.0.0.1:9"]').count() == 0 and not [u for u in fetched if "127.0.0.1:9" in u]
    # a longer name is kept as its first MAX_LEARNER_LEN characters, cut inside its markup: that part is
    # drawn as typed too, and the learner is told
    long = "![p](http://127.0.0.1:9/pixel.png) :red[r] <b>b</b> $x$"
    kept = long[:MAX_LEARNER_LEN]
    _set_learner(page, long)
    page.get_by_text("Names keep at most").first.wait_for()
    side = page.locator('[data-testid="stSidebar"]').inner_text()
    assert f"are saved under its first {MAX_LEARNER_LEN}: {kept}. Type a shorter name" in side, side[:800]
    assert f"{kept}: 0% of the course done" in side
    assert kept in page.locator('[data-testid="stMetric"]').filter(has_text="Learner").first.inner_text()
    assert page.locator('img[src*="127.0.0.1:9"]').count() == 0 and not [u for u in fetched if "127.0.0.1:9" in u]
    assert page.locator('[data-testid="stMain"] .katex').count() == 0
    _clean(page)
