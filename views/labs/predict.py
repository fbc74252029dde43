"""Predict, then run: the question a lab asks before its first run, saved with the learner's answers.

The prediction is a row of the progress store like a quiz answer (question id
``predict-LAB_ID``, kind ``prediction``, the chosen option's id as the response); it is not graded
and counts towards no progress. A prediction naming an option that no longer exists is treated
as not made.
"""

from __future__ import annotations

import streamlit as st

from course import widgets
from course.lessons import Lab

KIND = "prediction"


def saved(lab: Lab) -> str | None:
    """The option id the learner last predicted for ``lab``, if it still exists."""
    if lab.predict is None:
        return None
    a = widgets.latest_attempts().get((lab.lesson, lab.prediction_id))
    ids = {o.id for o in lab.predict.options}
    return a.response if a is not None and a.kind == KIND and a.response in ids else None


def block(lab: Lab) -> None:
    """The prediction form (or, once answered, the learner's prediction with a way to change it)."""
    p = lab.predict
    if p is None:
        return
    before = saved(lab)
    by_id = {o.id: o.text for o in p.options}
    with st.container(border=True):
        st.markdown(f":material/psychology_alt: **Predict, then run.** {p.prompt}")
        if before is not None:
            st.caption(f"Your prediction: **{by_id[before]}**. Run the lab and compare; you can change it below.")
        with st.form(f"predict:{lab.id}", border=False):
            ids = list(by_id)
            choice = st.radio("Your prediction", ids, format_func=by_id.get, key=f"predict:{lab.id}:choice",
                              index=None if before is None else ids.index(before), label_visibility="collapsed")
            sent = st.form_submit_button("Save my prediction" if before is None else "Change my prediction")
        if sent:
            if choice is None:
                st.warning("Pick one answer first; nothing was saved.", icon=":material/warning:")
            elif choice != before:
                widgets.save(lambda s: s.record(widgets.learner(), lab.lesson, lab.prediction_id, KIND, choice,
                                                None, None))
                st.rerun()


def reminder(lab: Lab) -> None:
    """Next to the results: what the learner predicted before running (nothing when they did not)."""
    chosen = saved(lab)
    if chosen is not None:
        text = next(o.text for o in lab.predict.options if o.id == chosen)
        st.caption(f":material/psychology_alt: You predicted: **{text}**. Does the run agree?")
