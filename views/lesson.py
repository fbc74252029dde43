"""A lesson page: objectives, explanation with labs in place, questions, sources."""

from __future__ import annotations

import streamlit as st

from course import widgets
from course.lessons import Lesson
from course.summary import lesson_progress
from views.labs import LABS


def render(lesson: Lesson, pages: dict[str, st.Page]) -> None:
    st.title(f"{lesson.icon} {lesson.title}".strip())
    st.caption(f"{lesson.section} · lesson {lesson.order} · about {lesson.minutes} minutes")
    st.markdown(f"*{lesson.summary}*")

    with st.container(border=True):
        st.markdown("**After this lesson you can**")
        st.markdown("\n".join(f"- {o}" for o in lesson.objectives))

    for segment in lesson.segments():
        if segment.lab is not None:
            widgets.lab_frame(segment.lab, LABS.get(segment.lab.id))
        else:
            st.markdown(segment.text)

    st.header("Check your understanding")
    rows = widgets.history()
    p = lesson_progress(lesson, rows)
    st.progress(p.fraction, text=p.text())
    for number, q in enumerate(lesson.questions, start=1):
        widgets.question_block(lesson, q, number, rows.get((lesson.slug, q.id)))

    st.header("Sources")
    st.markdown("\n".join(
        f"{i}. {s.cite}" + (f" [{s.url}]({s.url})" if s.url else "") for i, s in enumerate(lesson.sources, start=1)
    ))

    link = widgets.link_params()  # the learner rides along in each link's address (a new tab keeps them)
    if lesson.related:
        st.subheader("Related lessons")
        for slug in lesson.related:
            st.page_link(pages[slug], query_params=link)

    order = [x.slug for x in widgets.lessons()]
    i = order.index(lesson.slug)
    cols = st.columns(2)
    if i > 0:
        cols[0].page_link(pages[order[i - 1]], label=f"← {pages[order[i - 1]].title}", query_params=link)
    if i + 1 < len(order):
        cols[1].page_link(pages[order[i + 1]], label=f"{pages[order[i + 1]].title} →", query_params=link)
