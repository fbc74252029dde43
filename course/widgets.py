"""Small reusable Streamlit widgets: the store handle, questions, lab frames.

Pages call these; they hold layout and session glue only. Grading lives in
``course.grading``, storage in ``course.progress``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import streamlit as st

from course.grading import ResponseError, grade
from course.lessons import Lab, Lesson, Question, load_lessons
from course.progress import Attempt, ProgressStore, StoreUnavailable, default_path, memory_store, open_store

log = logging.getLogger(__name__)

DEFAULT_LEARNER = "guest"
MAX_LEARNER_LEN = 40
KIND_LABEL = {
    "single": "single choice",
    "multiple": "multiple choice: select all that apply",
    "numeric": "numeric",
    "reflection": "reflection",
}
RATINGS = {1: "missed the key points", 2: "partly there", 3: "covered it"}


# --------------------------------------------------------------------------- data


@st.cache_resource(show_spinner=False)
def lessons() -> list[Lesson]:
    """All lessons, loaded once per server process."""
    return load_lessons()


@st.cache_resource(show_spinner=False)
def _shared_store(path: str) -> tuple[ProgressStore, str | None]:
    return open_store(path)


def store() -> ProgressStore:
    """The store for this session: the shared SQLite file, or this session's
    in-memory fallback after the file failed."""
    fallback = st.session_state.get("_fallback_store")
    if fallback is not None:
        return fallback
    return _shared_store(str(default_path()))[0]


def store_warning() -> str | None:
    """Why answers are not being saved to disk, if they are not."""
    return st.session_state.get("_store_warning") or _shared_store(str(default_path()))[1]


def _fall_back(exc: Exception) -> ProgressStore:
    """Switch this session to an in-memory store, carrying over what can be read."""
    log.warning("progress store failed: %s", exc)
    old = store()
    new = memory_store()
    try:
        for a in old.attempts(learner()):
            new.record(a.learner, a.lesson, a.question, a.kind, a.response, a.correct, a.score)
    except StoreUnavailable:
        pass
    st.session_state["_fallback_store"] = new
    st.session_state["_store_warning"] = (
        f"Saving failed ({exc}). Your answers from now on are kept for this browser session only; "
        "the course keeps working."
    )
    return new


def save(fn: Callable[[ProgressStore], object]) -> object:
    """Run a write against the store; on failure, fall back and retry once in memory."""
    try:
        return fn(store())
    except StoreUnavailable as exc:
        return fn(_fall_back(exc))


def latest_attempts(name: str | None = None) -> dict[tuple[str, str], Attempt]:
    try:
        return store().latest(name or learner())
    except StoreUnavailable as exc:
        return _fall_back(exc).latest(name or learner())


def learner() -> str:
    """The learner name chosen in the sidebar (cleaned), default 'guest'."""
    raw = str(st.session_state.get("learner", DEFAULT_LEARNER))
    name = " ".join(raw.split())[:MAX_LEARNER_LEN]
    return name or DEFAULT_LEARNER


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


def _input(lesson: Lesson, q: Question, prev: Attempt | None):
    key = f"q:{lesson.slug}:{q.id}"
    labels = [o.text for o in q.options]
    if q.kind == "single":
        index = prev.response if prev is not None and isinstance(prev.response, int) else None
        choice = st.radio("Your answer", labels, index=index, key=key, label_visibility="collapsed")
        return None if choice is None else labels.index(choice)
    if q.kind == "multiple":
        before = set(prev.response) if prev is not None and isinstance(prev.response, list) else set()
        return [i for i, text in enumerate(labels) if st.checkbox(text, value=i in before, key=f"{key}:{i}")]
    if q.kind == "numeric":
        unit = f" ({q.unit})" if q.unit else ""
        value = str(prev.response) if prev is not None else ""
        return st.text_input(f"Your answer{unit}", value=value, key=key, placeholder="e.g. 4.1 or 4.1e9")
    value = prev.response if prev is not None and isinstance(prev.response, str) else ""
    return st.text_area("Your answer", value=value, key=key, height=140)


def _feedback(q: Question, a: Attempt) -> None:
    if q.kind in ("single", "multiple"):
        chosen = {a.response} if q.kind == "single" else set(a.response or [])
        if a.correct:
            st.success("Correct.", icon=":material/check_circle:")
        else:
            st.error("Not quite. Read the explanations, then try again.", icon=":material/cancel:")
        lines = []
        for i, o in enumerate(q.options):
            mark = ":material/check_circle:" if o.correct else ":material/close:"
            yours = " *(your choice)*" if i in chosen else ""
            lines.append(f"- {mark} **{o.text}**{yours}: {o.explanation}")
        st.markdown("\n".join(lines))
    elif q.kind == "numeric":
        try:
            msg = grade(q, a.response).message
        except ResponseError:
            msg = "Correct." if a.correct else "Not quite."
        (st.success if a.correct else st.error)(msg, icon=":material/check_circle:" if a.correct else ":material/cancel:")
    if q.explanation:
        st.info(q.explanation)


def _reflection_followup(lesson: Lesson, q: Question, a: Attempt) -> None:
    st.success("Answer saved.", icon=":material/save:")
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
                save(lambda s: s.rate(a.id, rating))
                st.rerun()
    if a.self_rating:
        st.caption(f"Your rating: {a.self_rating} · {RATINGS[a.self_rating]}")


def question_block(lesson: Lesson, q: Question, number: int, prev: Attempt | None) -> None:
    """One question: prompt, input, submit, graded feedback from the store."""
    with st.container(border=True):
        st.markdown(f"**Question {number}** · *{KIND_LABEL[q.kind]}*")
        st.markdown(q.prompt)
        with st.form(key=f"form:{lesson.slug}:{q.id}"):
            response = _input(lesson, q, prev)
            label = "Save answer" if q.kind == "reflection" else "Check answer"
            submitted = st.form_submit_button(label)
        if submitted:
            try:
                g = grade(q, response)
            except ResponseError as exc:
                st.warning(str(exc))
            else:
                if q.kind == "numeric":
                    response = str(response).strip()
                save(lambda s: s.record(learner(), lesson.slug, q.id, q.kind, response, g.correct, g.score))
                st.rerun()
        if prev is not None:
            if q.kind == "reflection":
                _reflection_followup(lesson, q, prev)
            else:
                _feedback(q, prev)
