"""Natural Gradient in Deep Learning: the course app.

Run with ``streamlit run app.py``. Lessons are discovered from ``lessons/``;
each gets a page in its section of the navigation.
"""

from __future__ import annotations

import streamlit as st

from course import widgets
from course.lessons import SECTIONS, Lesson, LessonError
from course.progress import default_path
from course.summary import lesson_progress, overall
from views import home, lesson, progress

st.set_page_config(page_title="Natural Gradient in Deep Learning", page_icon=":material/school:", layout="wide")


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    from natgrad.devices import describe

    return describe().label


def lesson_page(item: Lesson, pages: dict[str, st.Page]) -> st.Page:
    def page() -> None:
        lesson.render(item, pages)

    page.__name__ = f"lesson_{item.slug.replace('-', '_')}"
    return st.Page(page, title=item.title, icon=item.icon or None, url_path=item.slug)


def sidebar(lessons: list[Lesson]) -> None:
    with st.sidebar:
        st.session_state.setdefault("learner", widgets.DEFAULT_LEARNER)
        st.text_input("Learner name", key="learner", max_chars=widgets.MAX_LEARNER_LEN,
                      help="Progress is saved per name. Use the same name to pick up where you left off.")
        name = widgets.learner()
        latest = widgets.latest_attempts(name)
        done = overall([lesson_progress(x, latest) for x in lessons])
        st.progress(done, text=f"{name}: {done:.0%} of the course done")
        if warning := widgets.store_warning():
            st.warning(warning, icon=":material/warning:")
        else:
            st.caption(f"Progress saved in `{default_path()}`")
        st.caption(f"Labs run on: **{device_label()}**")


def main() -> None:
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
    sections: dict[str, list[st.Page]] = {"Course": [home_page, progress_page]}
    for section in SECTIONS:
        members = [pages[x.slug] for x in lessons if x.section == section]
        if members:
            sections[section] = members
    nav = st.navigation(sections)
    sidebar(lessons)
    nav.run()


main()
