"""Natural Gradient in Deep Learning: the course app.

Run with ``streamlit run app.py``. Lessons are discovered from ``lessons/``;
each gets a page in its section of the navigation.
"""

from __future__ import annotations

# pandas: Streamlit imports it on the first st.dataframe, 0.4 s on the first lab page that shows a table.
# Imported here, in the script's own thread, on the server's first run: imported in a background thread
# instead, it would be half-initialised in sys.modules while Streamlit checks objects against it.
import pandas  # noqa: F401
import streamlit as st

from course import network, widgets
from course.lessons import SECTIONS, Lesson, LessonError
from course.markup import escape_markdown
from course.progress import default_path
from course.summary import lesson_progress, overall
from views import home, labs, lesson, notation, progress, style

st.set_page_config(page_title="Natural Gradient in Deep Learning", page_icon="🎓", layout="wide")
style.inject()  # phone width: equations and tables scroll in their own box, labels wrap


@st.cache_resource(show_spinner=False)
def send_at_once() -> int:
    """Once per server: its replies leave without Nagle's 40 ms wait (course/network.py says why)."""
    return network.send_at_once()


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from natgrad.devices import describe

    return describe().label


def lesson_page(item: Lesson, pages: dict[str, st.Page]) -> st.Page:
    def page() -> None:
        lesson.render(item, pages)

    page.__name__ = f"lesson_{item.slug.replace('-', '_')}"
    return st.Page(page, title=item.short_title, icon=item.icon or None, url_path=item.slug)


def sidebar(lessons: list[Lesson]) -> None:
    with st.sidebar:
        # Who the learner is lives in the URL (?learner=, bound to this box: kept on reload, across pages and in
        # bookmarks) and in a cookie for tabs opened without it; course/session.py says why.
        restored = widgets.restore_learner()
        # no max_chars: the browser would cut a long paste silently; learner_notice() explains instead.
        # (value=None when the session state holds the restored name: a default as well would be ignored, with a
        # warning in the log; the box's identity is its key, so the value argument may differ between runs.)
        st.text_input("Learner name", value=None if restored else widgets.DEFAULT_LEARNER, key="learner",
                      bind="query-params",
                      help=f"Progress is saved per name (at most {widgets.MAX_LEARNER_LEN} characters). Use the "
                           "same name to pick up where you left off: it stays in this page's address (bookmark "
                           "it) and in this browser.")
        if notice := widgets.learner_notice():
            st.info(notice, icon=":material/badge:")
        name = widgets.learner()
        widgets.sync_pending()
        rows = widgets.history(name)
        done = overall([lesson_progress(x, rows) for x in lessons])
        st.progress(done, text=f"{escape_markdown(name)}: {done:.0%} of the course done")
        if note := widgets.store_note():
            st.success(note, icon=":material/cloud_done:")
        if warning := widgets.store_warning():
            st.warning(warning, icon=":material/warning:")
        else:
            st.caption(f"Progress saved in `{default_path()}`")
        # the device is named once the warm-up has imported torch (the server's first page does not wait)
        st.caption(f"Labs run on: **{device_label()}**" if not labs.warming() else
                   "Labs run on: the device is being detected (shown on the next page)")
        # (one element for both scripts: each st.html takes a row of the sidebar)
        st.html(widgets.remember_script(name) + style.prefetch_script() + style.anchor_script(), unsafe_allow_javascript=True,
                width="content")


def main() -> None:
    send_at_once()  # the open connections too: this page's own chunks and websocket messages
    labs.drop_non_finite_link_values()  # before any widget reads the link: Streamlit's int(float('1e400')) raises
    try:
        lessons = widgets.lessons()
    except LessonError as exc:
        st.error(f"A lesson file is malformed, so the course cannot start: {exc}")
        st.stop()
    pages: dict[str, st.Page] = {}
    for item in lessons:
        pages[item.slug] = lesson_page(item, pages)
    home_page = st.Page(lambda: home.render(pages), title="Home", icon=":material/home:", url_path="home", default=True)
    progress_page = st.Page(progress.render, title="My progress", icon=":material/insights:", url_path="progress")
    notation_page = st.Page(notation.render, title="Notation", icon=":material/functions:", url_path="notation")
    sections: dict[str, list[st.Page]] = {"Course": [home_page, progress_page, notation_page]}
    for section in SECTIONS:
        members = [pages[x.slug] for x in lessons if x.section == section]
        if members:
            sections[section] = members
    nav = st.navigation(sections)
    labs.warm_up()  # once per server: the labs' imports in the background (the home page does not need them)
    sidebar(lessons)
    nav.run()


main()
