"""How fast the course answers in a real browser: page settle times and each lab's run at its opening settings.

    python scripts/app_timing.py                  # every page, every lab form
    python scripts/app_timing.py --pages kfac damping
    python scripts/app_timing.py --fresh          # without the shipped opening results: real training
    python scripts/app_timing.py --no-labs --repeat 3   # pages only, each visited 3 times (median too)
    python scripts/app_timing.py --no-labs --links      # and reached from the sidebar, as a learner does
    python scripts/app_timing.py --no-labs --cold       # and each opened in a fresh browser (empty cache)

Starts ``streamlit run app.py`` headless on 127.0.0.1 (a free port) and drives
Debian's Chromium (``/usr/bin/chromium``) with the playwright package. A page
*settles* when no script run is going and nothing on it has changed for 0.5 s; its time runs
from the start of navigation (a full load of the page's address) to its last change (charts are drawn after
the run that sent them has ended); with
``--links`` pages are also reached by clicking their sidebar link, the app staying loaded,
timed from the click; with ``--cold`` each page is also opened in a fresh browser context (an empty
cache: a learner's first visit to the course, or a shared link opened for the first time), no other
tab of the course being open, and then, as soon as it has settled, scrolled to its first figure that waits
to be drawn (a lab far from the window draws its figures when the learner comes near it), timed until drawn. For every lab form the
submit button is pressed twice at the form's opening settings: the first
press is the learner's first run (served from the shipped results unless
``--fresh``), the second the cached rerun; each is timed from the click to the
end of the run it started (a lab reruns alone: it is an ``st.fragment``).
Times are wall clock on this machine and include whatever else it is doing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
QUIET_MS = 500  # a page or a lab has settled when no run has been going for this long
TIMEOUT_S = 600

# Record, in the page, when a script run starts and ends (Streamlit's status widget says "Running")
# and when the app (Streamlit's root element) last changed: not styles added to the document's head, nor
# the hidden test elements that a script loaded in the background adds to the body and removes.
OBSERVER = """
window.__runs = []; window.__running = false; window.__lastChange = performance.now();
new MutationObserver(records => {
  const root = document.getElementById('root');
  if (root && records.every(r => !root.contains(r.target))) return;
  window.__lastChange = performance.now();
  const w = document.querySelector('[data-testid="stStatusWidget"]');
  const running = !!document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')
    || (!!w && w.innerText.includes('Running'));
  if (running !== window.__running) { window.__running = running; window.__runs.push([running, performance.now()]); }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(fresh: bool) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, NATGRAD_COURSE_DB=str(Path(tempfile.mkdtemp()) / "progress.sqlite3"))
    if fresh:
        env["NATGRAD_COURSE_SHIPPED"] = "0"
    log = open(Path(tempfile.mkdtemp()) / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    stop_server(proc)
    raise SystemExit(f"streamlit did not start; see {log.name}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# [runs, running, now, last change, how many elements still wait]: an element whose front-end code is still
# loading shows a skeleton, and a plotly figure has no SVG until plotly has drawn it (a long task of loading
# and compiling plotly itself leaves the page unchanged for more than QUIET_MS)
PENDING = """() => [window.__runs, window.__running, performance.now(), window.__lastChange,
  document.querySelectorAll('#root [data-testid="stSkeleton"], #root [data-testid="stSkeletonElement"]').length
  + [...document.querySelectorAll('#root [data-testid="stPlotlyChart"]')].filter(e => !e.querySelector('.main-svg')).length]"""


def _settled(page, since_ms: float) -> float | None:
    """ms (page clock) at which the page last changed after ``since_ms``: no run going, no element waiting
    to be drawn and nothing changed for QUIET_MS (charts are drawn after the run that sent them has ended);
    else None."""
    runs, running, now, last_change, pending = page.evaluate(PENDING)
    if running or pending:
        return None
    ends = [t for r, t in runs if not r and t >= since_ms]
    if not ends and now - since_ms < 3 * QUIET_MS:
        return None  # no run seen yet (one shorter than 0.5 s shows no status): give it time to start
    end = max([*ends, last_change if last_change >= since_ms else since_ms])
    if now - end < QUIET_MS:
        return None
    return end


def wait_settled(page, since_ms: float) -> float:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        end = _settled(page, since_ms)
        if end is not None:
            return (end - since_ms) / 1e3
        page.wait_for_timeout(50)
    raise TimeoutError(f"not settled within {TIMEOUT_S} s")


def open_page(page, url: str) -> float:
    """Seconds from the start of navigation (a full page load) until the page has settled."""
    page.goto(url)
    page.wait_for_selector('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', timeout=TIMEOUT_S * 1e3)
    return wait_settled(page, 0.0)


def address(url: str, path: str) -> str:
    """A page's address: the home page (the default one) is the root; "/home" would open a "page not found" box."""
    return f"{url}/" if path == "home" else f"{url}/{path}"


# A lab far below the window draws its figures when the learner scrolls near it (views/labs/figures.py): until
# then each is a box of its height, keyed "<figure>-waiting".
WAITING = '#root [class*="st-key-"][class*="-waiting"]'


def scroll_to_figure(page) -> float | None:
    """Seconds from scrolling the page's first waiting figure into view until it (and its lab) has settled;
    None when no figure waits."""
    box = page.locator(WAITING).first
    if box.count() == 0:
        return None
    since = page.evaluate("() => performance.now()")
    box.scroll_into_view_if_needed()
    return wait_settled(page, since)


def follow_link(page, url: str, path: str) -> float:
    """Seconds from a click on the page's link in the sidebar (the app stays loaded) until it has settled."""
    target = address(url, path)
    link = page.locator(f'[data-testid="stSidebarNav"] a[href="{target}"]').first
    link.scroll_into_view_if_needed(timeout=10_000)
    since = page.evaluate("() => performance.now()")
    link.click()
    page.wait_for_url(lambda u: u.split("?")[0] in (target, f"{url}/{path}"), timeout=10_000)
    return wait_settled(page, since)


TAG_LABS = """() => {
  let i = 0;
  for (const h of document.querySelectorAll('[data-testid="stMain"] h4')) {
    if (!h.innerText.includes('Lab:')) continue;
    const box = h.closest('[data-testid="stVerticalBlock"]');
    if (!box) continue;
    box.setAttribute('data-timing-lab', String(i));
    box.setAttribute('data-timing-title', h.innerText.replace('science', '').replace('Lab:', '').trim());
    i++;
  }
  return i;
}"""


def lab_forms(page) -> list[tuple[str, object]]:
    """(lab title / button, submit button) for every form inside a lab frame."""
    out = []
    for i in range(page.evaluate(TAG_LABS)):
        lab = page.locator(f'[data-timing-lab="{i}"]')
        title = lab.get_attribute("data-timing-title")
        buttons = lab.locator('[data-testid="stFormSubmitButton"] button')
        for j in range(buttons.count()):
            button = buttons.nth(j)
            out.append((f"{title} / {button.inner_text().strip()}", button))
    return out


def press(page, button) -> float:
    button.scroll_into_view_if_needed()
    since = page.evaluate("() => performance.now()")
    button.click()
    return wait_settled(page, since)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", nargs="*", help="lesson slugs (default: every lesson)")
    parser.add_argument("--fresh", action="store_true", help="without the shipped opening results")
    parser.add_argument("--no-labs", action="store_true", help="page times only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="visit every page this many times (after its labs) and report the median too")
    parser.add_argument("--links", action="store_true",
                        help="then reach every page from its sidebar link (--repeat times), the app staying loaded")
    parser.add_argument("--cold", action="store_true",
                        help="then open every page (--repeat times) in a fresh browser context: an empty cache")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from course.lessons import load_lessons

    slugs = args.pages or [x.slug for x in load_lessons()]
    own = ["home", "progress", "notation"]  # the course's own pages, before the lessons
    proc, url = start_server(args.fresh)
    pages, labs = [], []
    visits: dict[str, list[float]] = {}  # page -> settle time of each visit
    clicks: dict[str, list[float]] = {}  # page -> settle time after each click on its sidebar link
    cold: dict[str, list[float]] = {}  # page -> settle time in a fresh browser context
    cold_scroll: dict[str, list[float]] = {}  # page -> then its first waiting figure, scrolled to at once
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_init_script(OBSERVER)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_S * 1e3)
            first = open_page(page, address(url, "home"))  # the server imports torch and the course on its first page
            pages.append(("home (first page of the server)", first))
            for path in [*own, *slugs]:
                pages.append((path, open_page(page, address(url, path))))
                print(f"page {path}: settled in {pages[-1][1]:.2f} s", flush=True)
                if not args.no_labs and path not in own:
                    for name, button in lab_forms(page):
                        first_run = press(page, button)
                        rerun = press(page, button)
                        labs.append((f"{path}: {name}", first_run, rerun))
                        print(f"  lab {name}: first run {first_run:.2f} s, rerun {rerun:.2f} s", flush=True)
                visits[path] = [pages[-1][1]] + [open_page(page, address(url, path)) for _ in range(args.repeat - 1)]
            if args.links:  # the same pages reached from the sidebar, as a learner moves through the course
                for path in [*own, *slugs] * args.repeat:
                    clicks.setdefault(path, []).append(follow_link(page, url, path))
            if args.cold:  # a new context has its own, empty, cache: nothing compiled or stored yet
                context.close()  # and no other tab of the course is open: a learner's first visit
                for path in [*own, *slugs] * args.repeat:
                    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})
                    fresh.add_init_script(OBSERVER)
                    tab = fresh.new_page()
                    tab.set_default_timeout(TIMEOUT_S * 1e3)
                    cold.setdefault(path, []).append(open_page(tab, address(url, path)))
                    if (scrolled := scroll_to_figure(tab)) is not None:  # at once: plotly may still be loading
                        cold_scroll.setdefault(path, []).append(scrolled)
                    fresh.close()
            browser.close()
    finally:
        stop_server(proc)
    many = args.repeat > 1
    print(f"\n{'page':<48} settled (s)" + (f"  median of {args.repeat} visits  (each)" if many else ""))
    for name, secs in pages:
        seen = visits.get(name)  # None for the server's first page
        extra = f"  {statistics.median(seen):8.2f}  ({', '.join(f'{v:.2f}' for v in seen)})" if many and seen else ""
        print(f"{name:<48} {secs:8.2f}{extra}")
    if clicks:
        print(f"\n{'page reached by its sidebar link':<48} median of {args.repeat}  (each)")
        for name, seen in clicks.items():
            print(f"{name:<48} {statistics.median(seen):8.2f}  ({', '.join(f'{v:.2f}' for v in seen)})")
    if cold:
        print(f"\n{'page opened in a fresh browser (empty cache)':<48} median of {args.repeat}  (each)")
        for name, seen in cold.items():
            print(f"{name:<48} {statistics.median(seen):8.2f}  ({', '.join(f'{v:.2f}' for v in seen)})")
    if cold_scroll:
        print(f"\n{'... then scrolled at once to its first figure':<48} median of {len(next(iter(cold_scroll.values())))}"
              "  (each: until drawn)")
        for name, seen in cold_scroll.items():
            print(f"{name:<48} {statistics.median(seen):8.2f}  ({', '.join(f'{v:.2f}' for v in seen)})")
    if labs:
        what = "first run (training)" if args.fresh else "first run (opening settings)"
        print(f"\n{'lab form':<72} {what:>28} {'cached rerun':>13}")
        for name, a, b in labs:
            print(f"{name[:72]:<72} {a:28.2f} {b:13.2f}")
    lesson_pages = [s for n, s in pages[1:] if n not in own]
    if lesson_pages:
        print(f"\nslowest lesson page {max(lesson_pages):.2f} s; "
              + (f"slowest lab first run {max(a for _, a, _ in labs):.2f} s, slowest rerun "
                 f"{max(b for _, _, b in labs):.2f} s" if labs else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
