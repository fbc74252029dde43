"""The course on a phone-width screen (390 x 844 CSS pixels) in headless Chromium: no element
sticks out to the right of the viewport unless it sits in a box that scrolls or clips it (wide
equations, tables and code scroll inside their own box), figures stack instead of shrinking,
and the learner's name is one tap away."""

from __future__ import annotations

import pytest

from course.lessons import load_lessons
from tests.browser.test_browser import WAITING, draw_all_figures, settle, wait_for_maths
from views.labs import LABS

WIDTH, HEIGHT = 390, 844
LESSONS = load_lessons()

# Elements of the main area whose right edge passes the viewport, leaving out those inside an
# ancestor that scrolls or clips horizontally (so the reader scrolls that box, not the page).
OVERFLOWING = """
(width) => {
  const main = document.querySelector('[data-testid="stMain"]');
  const clipped = (el) => {  // Streamlit's own scrolling main area does not count
    for (let a = el.parentElement; a && a !== main; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true;
    }
    return false;
  };
  const out = [];
  for (const el of document.querySelectorAll('[data-testid="stMain"] *')) {
    const r = el.getBoundingClientRect();
    // inside an <svg> (a figure) only the svg's own box takes up room on the page
    if (el.parentElement && el.parentElement.closest('svg')) continue;
    if (r.width === 0 || r.height === 0 || r.right <= width + 1 || clipped(el)) continue;
    out.push(`${el.tagName.toLowerCase()}.${el.getAttribute('class') || ''}`
             + ` right=${Math.round(r.right)}: ${(el.innerText || '').slice(0, 60)}`);
  }
  return out;
}
"""


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


@pytest.mark.parametrize("slug", [x.slug for x in LESSONS])
def test_a_lesson_fits_a_phone_screen(server, phone, slug):
    phone.goto(f"{server['url']}/{slug}")
    settle(phone)
    phone.get_by_role("heading", name="Sources").wait_for()
    lesson = next(x for x in LESSONS if x.slug == slug)
    has_labs = any(lab.id in LABS for lab in lesson.labs)
    if has_labs:  # (on the server's first pages a lab is drawn once its imports are done)
        phone.locator(f'{WAITING}, [data-testid="stMain"] [data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
    drawn = draw_all_figures(phone)  # the learner scrolls through the whole lesson
    assert drawn > 0 or not has_labs
    phone.evaluate("window.scrollTo(0, 0)")
    wait_for_maths(phone)
    # neither the page nor its main area scrolls sideways ...
    assert phone.evaluate("document.documentElement.scrollWidth") <= WIDTH + 1
    main = phone.evaluate("(() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                          " return [m.scrollWidth, m.clientWidth]; })()")
    assert main[0] <= main[1] + 1, main
    # ... and nothing is cut off at its right edge
    assert phone.evaluate(OVERFLOWING, WIDTH) == []
    # figures are stacked, one under the other, not squeezed side by side into columns
    boxes = phone.evaluate(
        "() => [...document.querySelectorAll('[data-testid=\"stMain\"] [data-testid=\"stPlotlyChart\"]')]"
        ".filter(e => !(e.closest('details') && !e.closest('details').open))"  # a closed expander's: not shown
        ".map(e => e.getBoundingClientRect()).filter(r => r.width > 0)"
        ".map(r => [Math.round(r.top), Math.round(r.bottom), Math.round(r.left), Math.round(r.right)])")
    side_by_side = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a[0] < b[1] - 1 and b[0] < a[1] - 1]
    assert not side_by_side, side_by_side


def test_the_overflow_probe_sees_a_wide_element(server, phone):
    """The probe above is no formality: a 1000-pixel element in the main area is reported,
    and the same element inside a scrolling box is not."""
    phone.goto(f"{server['url']}/summary")
    settle(phone)
    phone.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        const wide = document.createElement('div'); wide.id = 'probe-wide'; wide.style.width = '1000px';
        wide.innerText = 'too wide'; main.appendChild(wide);
    }""")
    assert any("too wide" in line for line in phone.evaluate(OVERFLOWING, WIDTH))
    phone.evaluate("""() => {
        const wide = document.getElementById('probe-wide'); const box = document.createElement('div');
        box.style.overflowX = 'auto'; wide.parentElement.appendChild(box); box.appendChild(wide);
    }""")
    assert not any("too wide" in line for line in phone.evaluate(OVERFLOWING, WIDTH))


def test_the_learner_name_is_one_tap_away_on_a_phone(server, phone):
    phone.goto(f"{server['url']}/kfac")
    settle(phone)
    box = phone.get_by_role("textbox", name="Learner name")
    if not box.is_visible():  # the sidebar starts collapsed on a narrow screen
        phone.locator('[data-testid="stExpandSidebarButton"], [data-testid="stSidebarCollapsedControl"] button'
                      ).first.click()
    box.wait_for(state="visible")
    box.fill("phone learner")
    box.press("Enter")
    phone.locator('[data-testid="stSidebar"]').get_by_text("phone learner: 0% of the course done").wait_for()
