"""Small reusable Streamlit widgets: questions, lab frames.

Pages call these; they hold layout and session glue only. Grading lives in
``course.grading``, storage in ``course.progress``, this session's store and
learner name in ``course.session`` (re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import streamlit as st

from course import quiz
from course.grading import ResponseError, chosen_ids, grade, stale_reason
from course.lessons import Lab, Lesson, Question
from course.progress import REVEAL, Attempt
from course.quiz import QuestionState
from course.session import (  # noqa: F401 - re-exported for the pages
    DEFAULT_LEARNER,
    MAX_LEARNER_LEN,
    history,
    latest_attempts,
    learner,
    learner_notice,
    lessons,
    link_params,
    rate,
    remember_script,
    reset,
    restore_learner,
    save,
    store,
    store_note,
    store_warning,
    sync_pending,
)

log = logging.getLogger(__name__)

KIND_LABEL = {
    "single": "single choice",
    "multiple": "multiple choice: select all that apply",
    "numeric": "numeric",
    "reflection": "reflection",
}
RATINGS = {1: "missed the key points", 2: "partly there", 3: "covered it"}


# --------------------------------------------------------------------------- labs


def lab_placeholder(lab: Lab) -> None:
    """An honest frame for a lab that is not built yet."""
    with st.container(border=True):
        st.markdown(f"#### :material/science: Lab: {lab.title}")
        st.markdown(lab.description)
        where = f" It is tracked as issue #{lab.issue}." if lab.issue else ""
        st.caption(f":material/construction: Not built yet: this lab is planned and will appear here.{where}")


def lab_frame(lab: Lab, render: Callable[[Lab], None] | None) -> None:
    """Draw a lab, or its placeholder; an error inside a lab is shown in words."""
    if render is None:
        lab_placeholder(lab)
        return
    with st.container(border=True):
        st.markdown(f"#### :material/science: Lab: {lab.title}")
        try:
            render(lab)
        except Exception as exc:  # a lab must never show a traceback to a learner
            log.exception("lab %s failed", lab.id)
            st.error(
                f"This lab stopped with an error ({type(exc).__name__}: {exc}). "
                "Try other settings; your progress is safe."
            )


# --------------------------------------------------------------------------- questions
#
# A question's answer widgets are filled from the learner's saved answer (choices,
# number, reflection text). Streamlit identifies these widgets by their key, so a
# ``value=`` argument would not change what an existing widget shows (after the
# learner's name changes, or when a saved answer is read back): the saved answer is
# written into the session state instead, before the widgets are drawn, once per
# (learner, saved answer), and again when the widget state is gone (the learner
# visited another page). An entry the learner submitted that could not be graded
# stays in the box, with its reason, and the feedback of the older answer is hidden.


def _keys(lesson: Lesson, q: Question) -> list[str]:
    """The session-state keys of ``q``'s answer widgets (one per option for multiple choice)."""
    key = f"q:{lesson.slug}:{q.id}"
    return [f"{key}:{o.id}" for o in q.options] if q.kind == "multiple" else [key]


def _widget_values(lesson: Lesson, q: Question, saved: Attempt | None) -> dict[str, object]:
    """What ``q``'s widgets show for ``saved`` (None: empty)."""
    keys = _keys(lesson, q)
    if q.kind == "single":
        chosen = chosen_ids(q, saved.response)[0] if saved is not None else None
        return {keys[0]: next((o.text for o in q.options if o.id == chosen), None)}
    if q.kind == "multiple":
        chosen = set(chosen_ids(q, saved.response)) if saved is not None else set()
        return {k: o.id in chosen for k, o in zip(keys, q.options, strict=True)}
    return {keys[0]: "" if saved is None else str(saved.response)}


def _prefill(lesson: Lesson, q: Question, saved: Attempt | None) -> None:
    """Show ``saved`` in ``q``'s widgets when they show something of another learner or an older answer."""
    mark = (learner(), None if saved is None else saved.id)
    keys = _keys(lesson, q)
    marker = f"_shown:{keys[0]}"
    if st.session_state.get(marker) == mark and all(k in st.session_state for k in keys):
        return
    st.session_state[marker] = mark
    for k, v in _widget_values(lesson, q, saved).items():
        st.session_state[k] = v


def _input(lesson: Lesson, q: Question):
    """The answer widget (its value comes from the session state: :func:`_prefill`)."""
    key = _keys(lesson, q)[0]
    if q.kind == "single":
        # the widget's options are the texts (unique per question), so a learner sees no ids
        by_text = {o.text: o.id for o in q.options}
        choice = st.radio("Your answer", list(by_text), index=None, key=key, label_visibility="collapsed")
        return None if choice is None else by_text[choice]
    if q.kind == "multiple":
        return [o.id for o, k in zip(q.options, _keys(lesson, q), strict=True) if st.checkbox(o.text, key=k)]
    if q.kind == "numeric":
        unit = f" ({q.unit})" if q.unit else ""
        example = f"e.g. 4.1 or 4.1e9, or with a unit: 4.1 {q.unit}" if q.unit in ("GB", "MB", "GiB", "MiB", "PB") \
            else "e.g. 4.1 or 4.1e9"
        return st.text_input(f"Your answer{unit}", key=key, placeholder=example)
    return st.text_area("Your answer", key=key, height=140)


def _same(q: Question, response, saved: Attempt | None) -> bool:
    """Whether the widgets show the saved answer (nothing, when none is saved)."""
    if saved is None:
        return response in (None, "", [])
    if q.kind == "numeric" or q.kind == "reflection":
        return str(response).strip() == str(saved.response).strip()
    try:
        return sorted(chosen_ids(q, response)) == sorted(chosen_ids(q, saved.response))
    except ResponseError:
        return False


def _options(q: Question, chosen: set[str], marked: bool) -> None:
    """The options with their explanations: every option with right/wrong marks once the
    answer is shown, else only the learner's choices, unmarked."""
    lines = []
    for o in q.options:
        if marked:
            mark = ":material/check_circle:" if o.correct else ":material/close:"
            yours = " *(your choice)*" if o.id in chosen else ""
            lines.append(f"- {mark} **{o.text}**{yours}: {o.explanation}")
        elif o.id in chosen:
            lines.append(f"- **{o.text}** *(your choice)*: {o.explanation}")
    if lines:
        st.markdown("\n".join(lines))


def _feedback(lesson: Lesson, q: Question, s: QuestionState) -> None:
    """How the saved answer fares, without giving the right one away until it is revealed (course.quiz)."""
    a, g = s.answer, s.grade
    right = g is not None and bool(g.correct)
    if a is not None and right:
        later = " You gave it after the answer was shown." if s.status == "revealed" else ""
        text = f"Correct: {quiz.expected(q)}." if q.kind == "numeric" else "Correct."
        st.success(text + later, icon=":material/check_circle:")
    elif a is not None:
        if q.kind == "multiple":
            why = f"Not quite: {quiz.partial_credit(q, a.response)}."
        elif q.kind == "numeric":
            why = f"Not quite: {quiz.entered(q, a.response)} is {quiz.direction(q, a.response)}."
        else:
            why = "Not quite."
        if s.revealed:
            st.error(why, icon=":material/cancel:")
        else:
            left = s.tries_left
            hint = " The explanation of your choice is below." if q.kind in ("single", "multiple") else ""
            st.error(f"{why} Try again.{hint} The answer is shown after {left} more wrong "
                     f"answer{'s' if left != 1 else ''}, or when you press Show answer.", icon=":material/cancel:")
    if q.kind in ("single", "multiple"):
        chosen = set(chosen_ids(q, a.response)) if a is not None else set()
        _options(q, chosen, marked=right or s.revealed)
    if s.revealed and not right:
        how = "you asked for it" if s.asked else f"after {s.wrong} wrong answers"
        answer = f" {quiz.expected(q)}" if q.kind == "numeric" else \
            (" marked :material/check_circle: above" if q.kind in ("single", "multiple") else "")
        st.info(f"The answer ({how}):{answer}. Answering it now is recorded as done after the answer was "
                "shown, not as correct on your own.", icon=":material/visibility:")
    if (right or s.revealed) and q.explanation:
        st.info(q.explanation)
    if a is not None and not right and not s.revealed:
        if st.button("Show answer", key=f"reveal:{lesson.slug}:{q.id}", icon=":material/visibility:"):
            save(lambda st_: st_.record(learner(), lesson.slug, q.id, REVEAL, None, None, None))
            st.rerun()


def _reflection_followup(lesson: Lesson, q: Question, a: Attempt) -> None:
    st.success("Answer saved.", icon=":material/save:")
    mine, ref = st.columns(2)
    with mine:
        st.markdown("**Your answer**")
        with st.container(border=True):
            st.text(str(a.response))  # as typed: never read as Markdown
    with ref:
        st.markdown("**Reference answer**")
        st.info(q.reference)
    with st.form(key=f"rate:{lesson.slug}:{q.id}"):
        options = list(RATINGS)
        index = options.index(a.self_rating) if a.self_rating in options else None
        rating = st.radio(
            "How close was your answer to the reference?",
            options,
            index=index,
            format_func=lambda r: f"{r} · {RATINGS[r]}",
            horizontal=True,
            key=f"rating:{lesson.slug}:{q.id}",
        )
        if st.form_submit_button("Save my rating"):
            if rating is None:
                st.warning("Pick a rating first.")
            else:
                rate(a, rating)
                st.rerun()
    if a.self_rating in RATINGS:  # (a rating some other tool wrote is not shown)
        st.caption(f"Your rating: {a.self_rating} · {RATINGS[a.self_rating]}")


def question_block(lesson: Lesson, q: Question, number: int, rows: list[Attempt] | Attempt | None) -> None:
    """One question: prompt, input (filled from the saved answer), submit, feedback.

    ``rows`` are the learner's saved rows for this question, oldest first
    (:func:`course.session.history`); a single Attempt is read as a one-row history.
    A saved answer that no longer fits the question (its option was removed or
    edited, or the question changed kind) is stale: the learner is told, and it
    is neither shown as their answer nor graded.
    """
    s = quiz.question_state(q, rows)
    with st.container(border=True):
        st.markdown(f"**Question {number}** · *{KIND_LABEL[q.kind]}*")
        st.markdown(q.prompt)
        if s.stale is not None:
            st.warning(f"Your saved answer no longer fits this question ({stale_reason(q, s.stale.kind, s.stale.response)}"
                       "). The question was changed after you answered, so that answer is ignored: please answer "
                       "again.", icon=":material/history:")
        _prefill(lesson, q, s.answer)
        with st.form(key=f"form:{lesson.slug}:{q.id}"):
            response = _input(lesson, q)
            label = "Save answer" if q.kind == "reflection" else "Check answer"
            submitted = st.form_submit_button(label)
        problem = None
        if submitted or not _same(q, response, s.answer):
            # a submission, or an entry from an earlier submission that could not be graded
            try:
                new = grade(q, response)
            except ResponseError as exc:
                problem = str(exc)
            else:
                if submitted and not _same(q, response, s.answer):
                    if q.kind == "numeric":
                        response = str(response).strip()
                    save(lambda st_: st_.record(learner(), lesson.slug, q.id, q.kind, response, new.correct,
                                                new.score))
                    st.rerun()
        if problem is not None:
            st.warning(problem, icon=":material/edit:")
            if s.answer is not None:
                st.caption("Your saved answer is unchanged; its feedback shows again once you check an answer "
                           "that can be graded.")
        elif s.answer is not None or s.revealed:
            if q.kind == "reflection":
                _reflection_followup(lesson, q, s.answer)
            else:
                _feedback(lesson, q, s)
