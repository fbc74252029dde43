"""The course's few style rules, injected once per page run (a style-only ``st.html`` takes no space).

* Phone width (up to 640 px, where Streamlit already stacks columns): figures, equations and tables
  stay inside the screen. A wide display equation or Markdown table scrolls sideways inside its own
  box (``overflow-x: auto``) instead of pushing the page wider.
* Labels are never cut off: widget and metric labels wrap instead of ending in "...".
* The learner's name stays reachable on a phone: the sidebar's open button is always shown.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import streamlit
import streamlit as st

CSS = """
<style>
/* the sensor that tells a lab it is near the window takes no room (views/labs/figures.py) */
div[class*="st-key-near-sensor-"] { display: none; }
/* wide display maths and Markdown tables scroll inside their own box */
.katex-display { overflow-x: auto; overflow-y: hidden; max-width: 100%; padding: 0.1em 0; }
/* KaTeX's MathML copy (for screen readers) is clipped but keeps its width, which made narrow pages
   scroll sideways: keep it a 1-pixel box, as screen-reader-only text is */
.katex .katex-mathml { width: 1px !important; height: 1px !important; overflow: hidden !important; }
[data-testid="stMarkdownContainer"] table { display: block; max-width: 100%; overflow-x: auto; }
[data-testid="stTable"] { max-width: 100%; overflow-x: auto; }
[data-testid="stMarkdownContainer"] pre, [data-testid="stCode"] pre { max-width: 100%; overflow-x: auto; }
[data-testid="stMarkdownContainer"] { overflow-wrap: anywhere; }
/* labels wrap instead of being cut off with an ellipsis */
[data-testid="stWidgetLabel"], [data-testid="stWidgetLabel"] *,
[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important;
}
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * { white-space: normal !important;
  overflow-wrap: anywhere; }
[data-testid="stMetricDelta"], [data-testid="stMetricDelta"] * { white-space: normal !important; }
/* figures never wider than their column */
[data-testid="stPlotlyChart"], .stPlotlyChart { max-width: 100%; }
@media (max-width: 640px) {
  /* stacked columns: no side padding wasted, figures use the full width */
  [data-testid="stMainBlockContainer"] { padding-left: 0.75rem; padding-right: 0.75rem; }
  [data-testid="stHorizontalBlock"] { flex-wrap: wrap; }
  [data-testid="stHorizontalBlock"] > [data-testid="stColumn"] { min-width: 100% !important; flex: 1 1 100% !important; }
  /* the sidebar (learner name, progress) is one tap away */
  [data-testid="stExpandSidebarButton"], [data-testid="stSidebarCollapsedControl"] { visibility: visible !important;
    display: flex !important; }
  .katex-display > .katex { font-size: 1.0em; }
  /* an inline formula too wide to wrap at its operators scrolls too */
  [data-testid="stMarkdownContainer"] p > .katex, [data-testid="stMarkdownContainer"] li > .katex {
    display: inline-block; max-width: 100%; overflow-x: auto; overflow-y: hidden; vertical-align: middle; }
}
</style>
"""


def inject() -> None:
    """Add the style rules to the page (call once per run, before the page draws)."""
    st.html(CSS)


# Streamlit's front end loads the code that draws plotly figures (4.7 MB of JavaScript) and tables only when a
# page first shows one; compiling it added about a second to the first lab page a learner opened. Once any page
# has settled, the browser imports those chunks while it is idle, so a lab page reached from the sidebar finds
# them ready. The chunks are found by name in the installed Streamlit; if a release renames them, nothing is
# prefetched and nothing else changes (tests/browser/test_browser.py checks that both are found).
CHUNKS = ("PlotlyChart", "DataFrame")


def _static_js() -> Path:
    return Path(streamlit.__file__).parent / "static" / "static" / "js"


@functools.cache
def chunk_files() -> tuple[str, ...]:
    """The file names of the front-end chunks in :data:`CHUNKS` that this Streamlit ships (one each)."""
    found = []
    for name in CHUNKS:
        files = sorted(p.name for p in _static_js().glob(f"{name}.*.js"))
        if len(files) == 1:
            found.append(files[0])
    return tuple(found)


def anchor_script() -> str:
    """A script that keeps the element named by the address's ``#anchor`` in view while the page is still
    growing: Streamlit scrolls to it once, when it is drawn, and the figures drawn above it afterwards pushed
    a linked lab 900 px below the window. For 15 s after the page opened, each time the page's main block
    changes size, it scrolls the element back into view, unless the learner has scrolled, tapped or typed
    meanwhile; once per tab."""
    return ("<script>(() => { if (window.__courseAnchor) return; window.__courseAnchor = true;"
            " const id = decodeURIComponent(location.hash.slice(1)); if (!id) return;"
            " let moved = false; const stop = Date.now() + 15000;"
            " ['wheel', 'touchmove', 'keydown', 'mousedown'].forEach(e => addEventListener(e, () => { moved = true; },"
            " {capture: true, passive: true}));"
            " const go = () => { if (moved || Date.now() > stop) return; const el = document.getElementById(id);"
            " if (el) el.scrollIntoView({block: 'start'}); };"
            " const watch = () => { const main = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
            " if (!main) { if (Date.now() < stop) setTimeout(watch, 200); return; }"
            " const ro = new ResizeObserver(go); ro.observe(main); setTimeout(() => ro.disconnect(), stop - Date.now()); };"
            " watch(); })();</script>")


def prefetch_script() -> str:
    """A script that, once the browser is idle, imports the chunks of :func:`chunk_files` (relative to the
    address of Streamlit's own main script), once per tab."""
    files = json.dumps(list(chunk_files()))
    return ("<script>(() => { if (window.__courseChunks) return; window.__courseChunks = true;"
            " const main = document.querySelector('script[src*=\"/static/js/index.\"]'); if (!main) return;"
            f" const load = () => {files}.forEach(f => import(new URL(f, main.src).href).catch(() => {{}}));"
            " (window.requestIdleCallback || (f => setTimeout(f, 2000)))(load, {timeout: 5000}); })();</script>")
