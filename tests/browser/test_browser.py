"""The real server in headless Chromium: every page renders without an
exception; an answer survives a reload."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from course.lessons import load_lessons

LESSONS = load_lessons()
PAGES = ["", "progress"] + [x.slug for x in LESSONS]  # "" is the home page


def settle(page) -> None:
    """Wait until the script run has finished and the page is drawn."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_selector('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=60_000,
    )
    page.wait_for_timeout(500)


@pytest.mark.parametrize("path", PAGES)
def test_page_renders_without_exception(server, page, path):
    outside = []  # the course works offline: nothing is fetched from another host (the page icon was, from a CDN)
    page.on("request", lambda r: outside.append(r.url) if r.url.startswith("http") and
            not r.url.startswith(server["url"]) else None)
    page.goto(f"{server['url']}/{path}")
    settle(page)
    assert not outside, outside
    if path in {x.slug for x in LESSONS}:
        lesson = next(x for x in LESSONS if x.slug == path)
        page.get_by_role("heading", name="Sources").wait_for()
        assert lesson.title in page.locator("h1").first.inner_text()
        assert question_forms(page).count() == len(lesson.questions)
        wait_for_maths(page)
        assert page.locator(".katex").count() > 0, "maths is typeset by KaTeX"
    if path == "":
        page.get_by_role("heading", name="Learning path").wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.content()
    assert "Page not found" not in page.content()


def question_forms(page):
    """The question forms of a lesson page, in order (lab forms left out)."""
    answer = page.get_by_role("button", name=re.compile(r"^(Check|Save) answer$"))
    return page.locator('[data-testid="stForm"]').filter(has=answer)


def wait_for_maths(page) -> None:
    """Streamlit loads its KaTeX plugin on demand, the first time a page holds maths, and draws a
    skeleton for each Markdown element with maths until it has loaded (seconds on a busy machine)."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stMain\"] [data-testid=\"stSkeleton\"]')", timeout=30_000)


WAITING = '[data-testid="stMain"] [class*="st-key-"][class*="-waiting"]'
# no figure waits within reach of the window: every lab near it has drawn (its sensor reaches 400 px)
NONE_WAITING_NEAR = """(sel) => ![...document.querySelectorAll(sel)]
  .some(e => { const r = e.getBoundingClientRect(); return r.height > 0 && r.bottom > -350 && r.top < innerHeight + 350; })"""


def scroll_to(page, locator) -> None:
    """Scroll ``locator`` into view as a learner does, then let the labs near it draw their figures (a lab far
    from the window draws them when the learner comes near: its rerun would otherwise land mid-interaction)."""
    locator.scroll_into_view_if_needed()
    page.wait_for_function(NONE_WAITING_NEAR, arg=WAITING, timeout=60_000)
    settle(page)


def draw_all_figures(page) -> int:
    """Scroll through the whole page, a window at a time, as a learner reading it does, until no figure waits
    to be drawn; how many figures the page then shows."""
    scroll = """() => { const m = document.querySelector('[data-testid="stMain"]');
      const el = m && m.scrollHeight > m.clientHeight + 1 ? m : document.scrollingElement;
      const before = el.scrollTop; el.scrollBy(0, Math.round(innerHeight * 0.8)); return el.scrollTop === before; }"""
    for _ in range(500):
        at_end = page.evaluate(scroll)
        page.wait_for_function(NONE_WAITING_NEAR, arg=WAITING, timeout=60_000)
        if at_end:
            break
    assert page.locator(WAITING).count() == 0
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')].every(e => e.querySelector('.main-svg'))",
        timeout=60_000)
    return page.locator('[data-testid="stMain"] [data-testid="stPlotlyChart"]').count()


def shown_value(thumb) -> str | None:
    """The value a slider shows (Streamlit's sliders are <input type="range"> whose value is the
    option's index; the option itself is in aria-valuetext)."""
    return thumb.get_attribute("aria-valuetext")


def wait_for_results(page, metric: str, timeout_s: float) -> None:
    """Wait until :func:`results_of_a_run` holds for ``metric``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not results_of_a_run(page, metric) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert results_of_a_run(page, metric), f"no fresh result showing {metric!r} within {timeout_s:.0f} s"


def results_of_a_run(page, metric: str = "ms/step") -> bool:
    """Whether the lab shows the results (a metric holding ``metric``: by default the final loss with
    its ms/step) of a run made since the page opened.

    A lab opens on its opening settings' results, shipped with the course ("computed in advance"),
    and after Train the elements of the run before stay on the page, marked stale, until the new
    run has drawn its own: so only a fresh metric with no shipped-results note counts."""
    fresh = page.locator('[data-testid="stElementContainer"][data-stale="false"] [data-testid="stMetric"]')
    return (fresh.filter(has_text=metric).count() > 0
            and page.get_by_text("These results were computed in advance").count() == 0)


def test_answer_survives_reload(server, page):
    lesson = next(x for x in LESSONS if x.slug == "kfac")
    index, q = next((i, q) for i, q in enumerate(lesson.questions) if q.kind == "single")
    right = next(i for i, o in enumerate(q.options) if o.correct)
    page.goto(f"{server['url']}/{lesson.slug}")
    settle(page)
    form = question_forms(page).nth(index)
    scroll_to(page, form)
    form.locator('[role="radiogroup"] label').nth(right).click()
    form.get_by_role("button", name="Check answer").click()
    page.get_by_text("Correct.", exact=True).first.wait_for()

    page.reload()
    settle(page)
    page.get_by_role("heading", name="Sources").wait_for()
    assert page.get_by_text("Correct.", exact=True).count() >= 1
    form = question_forms(page).nth(index)
    assert form.locator('input[type="radio"]').nth(right).is_checked()
    assert page.locator('[data-testid="stException"]').count() == 0
    with sqlite3.connect(server["db"]) as conn:
        rows = conn.execute("SELECT learner, lesson, question, correct FROM attempts").fetchall()
    assert ("guest", lesson.slug, q.id, 1) in rows


def test_sharding_lab_spawns_ranks_from_the_real_server(server, page):
    """The ranks are spawned processes; under ``streamlit run`` (not AppTest) they must
    start, train and report back, and the lab draws their bars."""
    page.goto(f"{server['url']}/distributed-shampoo")
    settle(page)
    form = page.locator('[data-testid="stForm"]').filter(
        has=page.get_by_role("button", name="Launch the ranks and train"))
    scroll_to(page, form)
    # 10 steps: the opening settings' result is shipped with the course, and pressing for it launches nothing
    steps = form.get_by_role("slider").nth(1)
    steps.focus()
    steps.press("ArrowLeft")
    assert shown_value(steps) == "10"
    form.get_by_role("button", name="Launch the ranks and train").click()
    wait_for_results(page, "max |sharded − single process|", 120)
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "lab stopped" not in page.content() and "The sharded run stopped" not in page.content()
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 2


def test_riemannian_labs_draw_in_the_real_browser(server, page):
    """The 3-D sphere (WebGL) and the animated Poincare disks draw in Chromium; plain Adam's failure is told.
    (A lab draws its figures when the learner scrolls near it.)"""
    page.goto(f"{server['url']}/riemannian")
    settle(page)
    page.get_by_role("heading", name="Sources").wait_for()
    scroll_to(page, page.get_by_text("Lab: Retraction vs exponential map").first)
    sphere_metric = page.locator('[data-testid="stMetricLabel"]').filter(has_text="Cayley (Stiefel, k = 1)")
    assert sphere_metric.count() == 0  # the sphere's tab is drawn only when it is opened
    page.get_by_role("tab", name="unit sphere (= Stiefel St(3, 1))").click()
    sphere_metric.first.wait_for(timeout=30_000)
    page.locator('[data-testid="stPlotlyChart"] .gl-container canvas').first.wait_for(state="attached",
                                                                                    timeout=30_000)  # WebGL
    form = page.locator('[data-testid="stForm"]').filter(has=page.get_by_text("Riemannian Adam learning rate"))
    scroll_to(page, form)
    form.get_by_role("button", name="Train").click()
    page.get_by_text("out of the disk", exact=False).first.wait_for(state="attached", timeout=180_000)
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0 and "lab stopped" not in page.content()
    # the disk of the run that leaves it
    page.locator('[data-testid="stRadio"] label').filter(has_text="Adam (plain)").first.click()
    page.get_by_text("out of the disk", exact=False).first.scroll_into_view_if_needed()
    disk = page.locator('[data-testid="stPlotlyChart"]:visible').filter(has=page.locator(".slider-container"))
    disk.first.wait_for(timeout=30_000)  # the Poincare disk, animated with a slider
    page.screenshot(path=str(server["db"].parent / "riemannian.png"))


def test_the_home_page_prefetches_the_figure_and_table_code_once_idle(server, page):
    """After the home page (which draws no figure) has settled, the browser fetches the front-end chunks that
    draw plotly figures and tables; a lab page reached from the sidebar then draws its figures without
    fetching them again."""
    from views.style import CHUNKS, chunk_files

    assert [f.split(".")[0] for f in chunk_files()] == list(CHUNKS)  # this Streamlit ships each chunk once
    page.goto(f"{server['url']}/")
    settle(page)
    fetched = "() => performance.getEntriesByType('resource').map(e => e.name.split('/').pop())"
    page.wait_for_function(f"() => ({fetched})().filter(n => {list(chunk_files())!r}.includes(n)).length == 2",
                           timeout=30_000)
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 0  # nothing on home needed them
    before = page.evaluate(fetched)
    page.locator('[data-testid="stSidebarNav"] a[href$="/kfac"]').first.click()
    waiting = page.locator(WAITING).first  # far from the window: drawn when near
    waiting.wait_for(timeout=60_000)
    # (scrolled by the page's own script: the box goes once its lab comes near, maybe while being scrolled to)
    page.evaluate("(sel) => document.querySelector(sel)?.scrollIntoView()", WAITING)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .main-svg').length > 0",
                           timeout=60_000)
    again = [n for n in page.evaluate(fetched)[len(before):] if n in chunk_files()]
    assert again == []


def test_the_server_sends_small_files_without_waiting_for_an_acknowledgement(server, page):
    """Once the app has run, small files over one keep-alive connection come back in a few ms. With Nagle's
    algorithm on (course/network.py says why Streamlit's server had it), each waited for the client's delayed
    ACK: 44 ms on Linux, every one after the first few."""
    import http.client
    import urllib.request
    from urllib.parse import urlsplit

    page.goto(f"{server['url']}/")
    settle(page)  # the app has run in the server process
    with urllib.request.urlopen(f"{server['url']}/") as r:
        files = re.findall(r'(?:href|src)="\.?/?(static/[^"]+)"', r.read().decode())
    assert len(files) >= 20
    address = urlsplit(server["url"])
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    times = []
    try:
        for name in files[:24]:
            start = time.perf_counter()
            conn.request("GET", f"/{name}")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    # with the delay every one of them takes at least 40 ms; without it most take a few ms, even on a busy machine
    assert sorted(times[4:])[len(times[4:]) // 4] < 0.030, [round(t * 1e3, 1) for t in times]


def test_a_lab_far_below_draws_its_figures_when_the_learner_scrolls_to_it(server, page):
    """The Riemannian page opens with its labs far below the window: no figure is drawn, each waits in a box of
    its own height. Scrolled to the last lab, that lab alone reruns and draws its two figures in place of the
    boxes; the labs the learner did not come near still wait."""
    page.goto(f"{server['url']}/riemannian")
    settle(page)
    charts = page.locator('[data-testid="stPlotlyChart"]')
    waiting = page.locator(WAITING)
    # (on the server's first page the labs are drawn once their imports are done)
    page.wait_for_function("(sel) => document.querySelectorAll(sel).length == 7", arg=WAITING, timeout=60_000)
    settle(page)
    assert charts.count() == 0 and waiting.count() == 7
    box = page.locator(".st-key-pe-loss-waiting")
    height = box.bounding_box()["height"]
    box.scroll_into_view_if_needed()
    page.locator(".st-key-pe-loss .main-svg").first.wait_for(timeout=60_000)
    drawn = page.locator(".st-key-pe-loss [data-testid='stPlotlyChart']").bounding_box()["height"]
    assert abs(drawn - height) < 0.1 * height  # the box held the figure's place: the page did not jump
    assert page.locator(".st-key-pe-disk-riemannian .main-svg").count() >= 1
    assert page.locator(".st-key-st-fig-waiting").count() == 1  # the first lab, far above, still waits
    assert charts.count() == 2


def test_a_link_to_a_lab_of_another_lesson_opens_that_lab_in_view(server, page):
    # (the links to lesson 8's preconditioner lab opened the top of the page, the lab 5000 pixels below)
    page.goto(f"{server['url']}/kfac")
    settle(page)
    href = page.locator('a[href*="practice#"]').first.get_attribute("href")
    assert href == "practice#science-lab-one-ideal-step-many-approximations"
    page.goto(f"{server['url']}/{href}")
    settle(page)
    anchor = page.locator("#" + href.split("#", 1)[1])
    anchor.wait_for(state="attached", timeout=120_000)  # (a fresh server draws its labs once the warm-up is done)
    settle(page)
    # in view once the page has stopped growing above it (figures drawn after the first scroll pushed it down)
    page.wait_for_timeout(1000)
    top = anchor.evaluate("e => e.getBoundingClientRect().top")
    assert 0 <= top < page.viewport_size["height"], top
