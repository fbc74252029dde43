"""The optimizer race in the real server and a headless Chromium: it trains its default racers
and draws loss against steps and against seconds, with no exception on the page."""

from __future__ import annotations

from tests.browser.test_browser import scroll_to, settle


def test_optimizer_race_runs_in_the_browser(server, page):
    page.goto(f"{server['url']}/practice")
    settle(page)
    race = page.get_by_role("button", name="Race", exact=True)
    scroll_to(page, race)
    race.click()
    page.get_by_text("seconds (wall clock)").first.wait_for(timeout=240_000)
    settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "lab stopped" not in page.content() and "Traceback" not in page.content()
    assert page.get_by_text("against steps").count() >= 1
    # both loss axes log and linked: plotly drops a match between axes of different types (the right one was linear)
    linked = page.evaluate("""() => { const l = document.querySelector('.st-key-race-fig .js-plotly-plot')._fullLayout;
        return [l.yaxis.type, l.yaxis2.type, l.yaxis2.matches]; }""")
    assert linked == ["log", "log", "y"], linked
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 2  # the race and the step times
