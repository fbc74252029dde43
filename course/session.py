"""This session's progress store and learner name (Streamlit glue, no widgets).

* The progress file is shared by every session (:func:`store`). When it cannot
  be used, a session falls back to an in-memory store of its own, says so
  (:func:`store_warning`), and on every later run checks the file again: once it
  works, the answers kept in memory are written to it in one transaction and the
  learner is told (:func:`sync_pending`, :func:`store_note`).
* A reset says what happened to the file (:func:`reset`).
* The learner name is cleaned and capped; an empty or over-long one is
  explained (:func:`learner_notice`), never silently replaced.
* Who the learner is survives a reload and a new tab, in two places:
  - the query string (``?learner=Ada``): the sidebar's name box is bound to it
    (``bind="query-params"``), so the name is in every URL the learner sees, a
    reload or a bookmark keeps it, Streamlit keeps a bound parameter when the
    learner moves between pages, and a link opens the course as that learner on
    any device. It wins whenever it is there.
  - a cookie (:data:`COOKIE`), written by the page whenever the name changes
    (:func:`remember_script`) and read when a session starts without a name in
    its URL (:func:`restore_learner`): a tab opened from a navigation link (whose
    address carries no query string) or by typing the bare address.
  Neither is a login: there is none, as there is no password (README, "Serving a
  class").
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import streamlit as st

from course.grading import ResponseError, to_option_ids
from course.lessons import Lesson, load_lessons
from course.markup import escape_markdown
from course.progress import (
    ENV_VAR,
    Attempt,
    ProgressStore,
    StoreUnavailable,
    by_question,
    default_path,
    latest_answers,
    memory_store,
    read_only_attempts,
)

log = logging.getLogger(__name__)

DEFAULT_LEARNER = "guest"
MAX_LEARNER_LEN = 40
COOKIE = "natgrad_learner"  # the learner's name, for a session that starts without ?learner= in its URL
COOKIE_DAYS = 180
_PROBE_TIMEOUT_S = 0.5  # how long a fallen-back session waits on a locked file when it checks it again


# --------------------------------------------------------------------------- data


@st.cache_resource(show_spinner=False)
def lessons() -> list[Lesson]:
    """All lessons, loaded once per server process."""
    return load_lessons()


def _to_option_ids(a: Attempt) -> object:
    """A stored choice answer by option position, rewritten with option ids (unchanged
    when it names nothing that exists: it then shows as stale)."""
    try:
        q = next(x for x in lessons() if x.slug == a.lesson).question(a.question)
        return to_option_ids(q, a.response) if q.kind == a.kind else a.response
    except (StopIteration, KeyError, ResponseError):
        return a.response


@st.cache_resource(show_spinner=False)
def _file_store(path: str) -> ProgressStore:
    """The progress file shared by every session, opened once per server (older choice
    answers converted to option ids). Raises StoreUnavailable, which is not cached:
    the next call tries again."""
    s = ProgressStore(path)
    try:
        s.migrate_responses("option-ids", _to_option_ids)
    except StoreUnavailable as exc:  # read-only: positions are still read as positions
        log.warning("could not convert stored answers to option ids: %s", exc)
    return s


@dataclass
class _Fallback:
    """This session's answers while the progress file cannot be used."""

    store: ProgressStore
    reason: str
    carried: dict[int, int] = field(default_factory=dict)  # id in memory -> id in the file, for copied answers
    learners: set[str] = field(default_factory=set)  # learners whose file answers were copied


def _path() -> str:
    return str(default_path())


def store() -> ProgressStore:
    """The store for this session: the shared SQLite file, or this session's
    in-memory fallback while the file cannot be used."""
    fb = st.session_state.get("_fallback")
    if fb is not None:
        return fb.store
    try:
        return _file_store(_path())
    except StoreUnavailable as exc:
        return _fall_back(exc, opening=True).store


def store_warning() -> str | None:
    """Why answers are not being saved to disk, if they are not."""
    return st.session_state.get("_store_warning")


def store_note() -> str | None:
    """A one-time message: the answers kept in memory have been written to the file."""
    return st.session_state.pop("_store_note", None)


def _fall_back(exc: Exception, opening: bool = False) -> _Fallback:
    """Switch this session to an in-memory store, carrying over what can be read."""
    log.warning("progress store failed: %s", exc)
    fb = _Fallback(memory_store(), str(exc))
    st.session_state["_fallback"] = fb
    _carry(fb, learner())
    if opening:
        st.session_state["_store_warning"] = (
            f"Your progress cannot be saved to `{_path()}` ({exc}). The course works as usual: your answers are "
            "kept in this browser session and written to the file as soon as it can be used again. To fix it, "
            f"move the file aside or set `{ENV_VAR}` to a writable path.")
    else:
        st.session_state["_store_warning"] = (
            f"Saving failed ({exc}). Your answers are kept in this browser session for now and written to the "
            "progress file as soon as it can be used again; the course keeps working.")
    return fb


def _carry(fb: _Fallback, name: str) -> None:
    """Copy ``name``'s answers from the file into the session's memory (once), when the file can still be read."""
    if name in fb.learners:
        return
    fb.learners.add(name)
    try:
        saved = _file_store(_path()).attempts(name)
    except StoreUnavailable:
        try:  # a file that can be read but not written (opening a store writes its schema)
            saved = read_only_attempts(_path(), name)
        except StoreUnavailable:
            return
    for a in saved:
        mid = fb.store.record(a.learner, a.lesson, a.question, a.kind, a.response, a.correct, a.score)
        if a.self_rating is not None:
            fb.store.rate(mid, a.self_rating)
        fb.carried[mid] = a.id


def sync_pending() -> None:
    """On every run of a session that fell back to memory: when the progress file can
    be used again, write the answers (and ratings) kept in memory to it, in one
    transaction, switch back to the file and tell the learner (:func:`store_note`)."""
    fb = st.session_state.get("_fallback")
    if fb is None:
        return
    kept = [a for name in fb.store.learners() for a in fb.store.attempts(name)]
    pending = [a for a in kept if a.id not in fb.carried]
    ratings = {fb.carried[a.id]: a.self_rating for a in kept if a.id in fb.carried and a.self_rating is not None}
    try:
        n = ProgressStore(_path(), timeout=_PROBE_TIMEOUT_S).import_attempts(pending, ratings)
    except StoreUnavailable:
        return  # still unusable; the warning stays
    del st.session_state["_fallback"]
    st.session_state.pop("_store_warning", None)
    saved = (f": the {n} answer{'s' if n != 1 else ''} you gave while it could not be used "
             f"{'are' if n != 1 else 'is'} now saved in `{_path()}`" if n else f"; answers are saved in `{_path()}` again")
    st.session_state["_store_note"] = f"The progress file works again{saved}."


def save(fn: Callable[[ProgressStore], object]) -> object:
    """Run a write against the store; on failure, fall back and retry once in memory."""
    try:
        return fn(store())
    except StoreUnavailable as exc:
        return fn(_fall_back(exc).store)


def rate(attempt: Attempt, rating: int) -> None:
    """Store a self-rating of ``attempt`` (read from the store this session uses)."""
    try:
        store().rate(attempt.id, rating)
    except StoreUnavailable as exc:
        fb = _fall_back(exc)
        mid = next((m for m, f in fb.carried.items() if f == attempt.id), None)
        if mid is not None:
            fb.store.rate(mid, rating)


def reset(name: str) -> tuple[str, str]:
    """Delete every saved answer of ``name``; returns ``(level, message)``, level one of
    "success", "warning", "error", the message saying what happened to the file."""
    who = escape_markdown(name)
    s = store()
    fb = st.session_state.get("_fallback")
    if fb is None:
        try:
            n = s.reset(name)
        except StoreUnavailable as exc:
            try:
                still = f" All {s.count(name)} saved answers of {who} are still in it."
            except StoreUnavailable:
                still = ""
            return "error", f"Nothing was deleted: the progress file `{_path()}` cannot be written ({exc}).{still}"
        return "success", f"Deleted {n} saved answers of {who} from the progress file `{_path()}`."
    n = fb.store.reset(name)
    try:
        left = _file_store(_path()).count(name)
        in_file = f"; it still holds {left} saved answers of {who}" if left else f"; it holds no answers of {who}"
    except StoreUnavailable:
        in_file = ""
    return "warning", (f"Deleted {n} answers of {who} kept in this browser session. The progress file "
                       f"`{_path()}` cannot be used right now ({fb.reason}), so nothing in it was changed{in_file}. "
                       "Reset again once it works to delete those.")


def _attempts(name: str | None) -> list[Attempt]:
    """Every row of ``name`` (default: this session's learner), from the store this session uses."""
    name = name or learner()
    s = store()
    fb = st.session_state.get("_fallback")
    if fb is not None:
        _carry(fb, name)
        return fb.store.attempts(name)
    try:
        return s.attempts(name)
    except StoreUnavailable as exc:
        return _fall_back(exc).store.attempts(name)


def latest_attempts(name: str | None = None) -> dict[tuple[str, str], Attempt]:
    """The newest answer per (lesson, question) ("Show answer" rows skipped)."""
    return latest_answers(_attempts(name))


def history(name: str | None = None) -> dict[tuple[str, str], list[Attempt]]:
    """Every row per (lesson, question), oldest first, "Show answer" rows included (course.quiz reads them)."""
    return by_question(_attempts(name))


# --------------------------------------------------------------------------- learner


def _clean(raw: str) -> str:
    """A name with runs of whitespace (and other control characters) made one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(raw)).split())


def _typed() -> str:
    """The name as typed, cleaned (:func:`_clean`)."""
    return _clean(st.session_state.get("learner", DEFAULT_LEARNER))


def name_from_cookie(cookies: Mapping[str, str], query: Mapping[str, object]) -> str | None:
    """The learner a new session should start as, from its cookie: None when the URL
    names a learner (it wins) or the cookie holds no usable name."""
    if "learner" in query:
        return None
    raw = cookies.get(COOKIE)
    if not isinstance(raw, str):  # no cookie (or no browser: AppTest's context is a stand-in)
        return None
    name = _clean(urllib.parse.unquote(raw))[:MAX_LEARNER_LEN]
    return name if name and name != DEFAULT_LEARNER else None


def restore_learner() -> bool:
    """Once per session, before the name box is drawn: start as the learner named in the
    cookie when the URL names nobody (a new tab, the bare address). True when it did
    (the name box then takes its value from the session state, not its default)."""
    if st.session_state.get("_learner_restored"):
        return False
    st.session_state["_learner_restored"] = True
    try:
        name = name_from_cookie(st.context.cookies, st.query_params)
    except Exception:  # no browser behind this session (a test, a bare run): nothing to restore
        log.debug("no cookies to read", exc_info=True)
        return False
    if name is None:
        return False
    st.session_state["learner"] = name
    return True


def link_params() -> dict[str, str]:
    """Query parameters for a link to another page: the learner (none for the shared default name)."""
    name = learner()
    return {} if name == DEFAULT_LEARNER else {"learner": name}


def remember_script(name: str) -> str:
    """The script that keeps ``name`` in the learner cookie (deletes it for the shared
    default name). ``name`` is embedded as a JSON string with ``<``, ``>`` and ``&``
    escaped, so no name can close the script element or inject markup."""
    value = json.dumps(name, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    age = 0 if name == DEFAULT_LEARNER else COOKIE_DAYS * 86400
    return (f"<script>document.cookie = {json.dumps(COOKIE + '=')} + encodeURIComponent({value}) + "
            f"\"; path=/; max-age={age}; SameSite=Lax\";</script>")


def learner() -> str:
    """The learner name chosen in the sidebar: cleaned, at most MAX_LEARNER_LEN
    characters, 'guest' when empty (:func:`learner_notice` tells the learner)."""
    return _typed()[:MAX_LEARNER_LEN] or DEFAULT_LEARNER


def learner_notice() -> str | None:
    """What the learner should know about how their name was taken, if anything."""
    typed = _typed()
    if not typed:
        return (f"With no name, your answers are saved under the shared name **{DEFAULT_LEARNER}**, together with "
                "everyone else's who leaves it empty. Type a name to keep your own progress.")
    if len(typed) > MAX_LEARNER_LEN:
        return (f"Names keep at most {MAX_LEARNER_LEN} characters and yours has {len(typed):,}, so your answers "
                f"are saved under its first {MAX_LEARNER_LEN}: **{escape_markdown(learner())}**. Type a shorter "
                "name to choose exactly.")
    return None
