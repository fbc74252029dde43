"""Home: what the course teaches, the learning path, the learner's progress."""

from __future__ import annotations

import streamlit as st

from course import widgets
from course.lessons import SECTIONS, load_intro
from course.markup import escape_markdown
from course.summary import lesson_progress, overall
from views.labs import LABS


def render(pages: dict[str, st.Page]) -> None:
    st.title("Natural Gradient in Deep Learning")
    st.markdown(load_intro())

    lessons = widgets.lessons()
    history = widgets.history()
    progress = {x.slug: lesson_progress(x, history) for x in lessons}
    st.header("Your progress")
    done = overall(list(progress.values()))
    shown = sum(p.graded_revealed for p in progress.values())
    c1, c2, c3 = st.columns(3)
    c1.metric("Learner", escape_markdown(widgets.learner()))
    c2.metric("Course complete", f"{done:.0%}")
    c3.metric("Graded answers correct", f"{sum(p.graded_correct for p in progress.values())} / "
              f"{sum(p.graded_total for p in progress.values())}",
              help="Right on your own; questions whose answer you were shown are counted apart." if shown else None)
    if shown:
        st.caption(f"{shown} question{'s' if shown != 1 else ''} answered after the answer was shown (done, not "
                   "counted as correct).")

    st.header("Learning path")
    for section in SECTIONS:
        in_section = [x for x in lessons if x.section == section]
        if not in_section:
            continue
        st.subheader(section)
        for lesson in in_section:
            p = progress[lesson.slug]
            with st.container(border=True):
                st.page_link(pages[lesson.slug], label=f"{lesson.order}. {lesson.title}", icon=lesson.icon or None,
                             query_params=widgets.link_params())
                built = sum(lab.id in LABS for lab in lesson.labs)  # a "not built yet" frame is not a lab
                labs = f"{built} lab{'s' if built != 1 else ''}" if built else "no labs yet"
                st.caption(f"{lesson.summary} · about {lesson.minutes} min · {labs} · "
                           f"{len(lesson.questions)} questions")
                st.progress(p.fraction, text=f"{p.done} of {p.total} done")
