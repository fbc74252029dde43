"""My progress: every saved answer, export as JSON or CSV, and reset."""

from __future__ import annotations

import streamlit as st

from course import widgets
from course.markup import escape_markdown, safe_filename
from course.summary import lesson_progress


def render() -> None:
    name = widgets.learner()
    who = escape_markdown(name)
    st.title("My progress")
    st.caption(f"Learner: **{who}** · change the name in the sidebar.")
    lessons = widgets.lessons()
    history = widgets.history()
    rows = []
    for lesson in lessons:
        p = lesson_progress(lesson, history)
        rows.append({
            "lesson": f"{lesson.order}. {lesson.title}",
            "graded answered": f"{p.graded_answered}/{p.graded_total}",
            "graded correct": p.graded_correct,
            "answers shown": p.graded_revealed,
            "reflections": f"{p.reflections_done}/{p.reflections_total}",
            "done": round(100 * p.fraction),
        })
    st.dataframe(
        rows,
        hide_index=True,
        column_config={"done": st.column_config.ProgressColumn("done", format="%d%%", min_value=0, max_value=100)},
    )

    st.header("Export")
    store = widgets.store()
    try:
        as_json, as_csv = store.export_json(name), store.export_csv(name)
    except Exception as exc:  # a broken store must not break the page
        st.error(f"Export is unavailable right now: {exc}")
    else:
        c1, c2 = st.columns(2)
        stem = f"natgrad-progress-{safe_filename(name)}"
        c1.download_button("Download JSON", as_json, file_name=f"{stem}.json", mime="application/json")
        c2.download_button("Download CSV", as_csv, file_name=f"{stem}.csv", mime="text/csv")
        st.caption("In the CSV, text that a spreadsheet would run as a formula (starting with = + - @) begins "
                   "with ' so that it is shown as text. A row of kind `reveal` records a Show answer click.")

    st.header("Reset")
    with st.form("reset"):
        sure = st.checkbox(f"Yes, delete every saved answer of **{who}**")
        if st.form_submit_button("Reset my progress", type="primary"):
            if not sure:
                st.warning("Tick the box first; nothing was deleted.")
            else:
                st.session_state["_reset_note"] = widgets.reset(name)
                st.rerun()
    if note := st.session_state.pop("_reset_note", None):
        level, message = note
        getattr(st, level)(message)
