"""Progress honesty: a reset says what happened to the file; stored answers that
no longer fit their question are stale, never fatal; option ids survive
reordering; a session that fell back to memory writes its answers once the file
works again, and says so. The file is made read-only for real (files.unwritable)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from course.grading import chosen_ids, grade, regrade, to_option_ids
from course.lessons import LESSONS_DIR, load_lesson, load_lessons
from course.progress import ENV_VAR, ProgressStore
from course.summary import lesson_progress
from tests.app.helpers import open_page, start, submit
from tests.reliability.files import unwritable

LESSONS = {x.slug: x for x in load_lessons()}


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "progress.sqlite3"
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def _rows(db: Path, learner: str = "guest") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT lesson, question, response FROM attempts WHERE learner = ?", (learner,)).fetchall()


def _first(slug: str, kind: str):
    lesson = LESSONS[slug]
    return lesson, next(q for q in lesson.questions if q.kind == kind)


# ----------------------------------------------------------------------- reset
def test_reset_of_a_read_only_file_says_nothing_was_deleted(db):
    s = ProgressStore(db)
    for i in range(3):
        s.record("guest", "kfac", f"q{i}", "reflection", "an answer", None, None)
    at = open_page(start(), "progress")  # the store is opened while the file is writable
    with unwritable(db):
        at.checkbox[0].check()
        at = submit(at, "reset")
    assert not at.exception
    said = [e.value for e in at.error] + [x.value for x in at.success] + [w.value for w in at.warning]
    assert not any("Deleted 3" in m for m in said), said
    assert any(m.startswith("Nothing was deleted") and "All 3 saved answers of guest are still in it" in m
               for m in [e.value for e in at.error]), said
    assert len(_rows(db)) == 3


def test_reset_that_works_names_the_file(db):
    ProgressStore(db).record("guest", "kfac", "q", "reflection", "x", None, None)
    at = open_page(start(), "progress")
    at.checkbox[0].check()
    at = submit(at, "reset")
    assert any(s.value == f"Deleted 1 saved answers of guest from the progress file `{db}`." for s in at.success)
    assert _rows(db) == []


# ------------------------------------------------------------------ stale answers
def test_answers_to_options_that_no_longer_exist_are_stale_not_fatal(db):
    """A legacy position past the end (option removed) and an option id that no
    longer exists: the page draws to its Sources and says both are stale."""
    lesson, single = _first("kfac", "single")
    _, multiple = _first("kfac", "multiple")
    s = ProgressStore(db)
    s.record("guest", lesson.slug, single.id, "single", len(single.options) + 5, True, 1.0)
    s.record("guest", lesson.slug, multiple.id, "multiple", ["an-option-that-was-removed-abc123"], True, 1.0)
    at = open_page(start(), lesson.slug)
    assert not at.exception, at.exception
    assert "Sources" in [h.value for h in at.header]
    stale = [w.value for w in at.warning if w.value.startswith("Your saved answer no longer fits this question")]
    assert len(stale) == 2, stale
    assert at.radio(key=f"q:{lesson.slug}:{single.id}").value is None  # not shown as the learner's choice
    # stale answers count as unanswered, whatever `correct` was stored
    p = lesson_progress(lesson, ProgressStore(db).latest("guest"))
    assert p.graded_answered == 0 and p.graded_correct == 0


def _lesson_copy(tmp_path: Path, slug: str, edit) -> object:
    src = next(p for p in LESSONS_DIR.iterdir() if p.is_dir() and p.name.endswith(slug))
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    data = yaml.safe_load((dst / "questions.yaml").read_text())
    edit(data["questions"])
    (dst / "questions.yaml").write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return load_lesson(dst)


def test_reordering_options_keeps_saved_answers(tmp_path):
    lesson, q = _first("kfac", "multiple")
    right = [o.id for o in q.options if o.correct]
    wrong_single = next(o.id for o in _first("kfac", "single")[1].options if not o.correct)
    reordered = _lesson_copy(tmp_path, "kfac", lambda qs: [x["options"].reverse() for x in qs if "options" in x])
    q2 = reordered.question(q.id)
    s2 = reordered.question(_first("kfac", "single")[1].id)
    assert [o.text for o in q2.options] == [o.text for o in reversed(q.options)]
    assert grade(q2, right).correct is True and set(chosen_ids(q2, right)) == set(right)
    assert grade(s2, wrong_single).correct is False
    assert {o.text for o in s2.options if o.id == wrong_single} == {o.text for o in _first("kfac", "single")[1].options
                                                                   if o.id == wrong_single}


def test_removing_or_editing_an_option_makes_an_answer_stale(tmp_path):
    lesson, q = _first("kfac", "single")
    chosen = q.options[-1]

    def drop_last(qs):
        for x in qs:
            if x["id"] == q.id:
                x["options"] = x["options"][:-1] if not chosen.correct else x["options"][1:]

    edited = _lesson_copy(tmp_path, "kfac", drop_last).question(q.id)
    assert regrade(q, "single", chosen.id) is not None
    assert regrade(edited, "single", chosen.id) is None


def test_an_option_id_in_the_file_wins_over_its_text(tmp_path):
    lesson, q = _first("kfac", "single")

    def set_ids_and_edit(qs):
        for x in qs:
            if x["id"] == q.id:
                for i, o in enumerate(x["options"]):
                    o["id"] = f"opt-{i}"
                x["options"][0]["text"] += " (reworded)"

    edited = _lesson_copy(tmp_path, "kfac", set_ids_and_edit).question(q.id)
    assert [o.id for o in edited.options] == [f"opt-{i}" for i in range(len(q.options))]
    assert chosen_ids(edited, "opt-0") == ["opt-0"]


def test_old_answers_by_position_are_converted_to_option_ids_once(db):
    lesson, q = _first("kfac", "single")
    right = next(i for i, o in enumerate(q.options) if o.correct)
    ProgressStore(db).record("guest", lesson.slug, q.id, "single", right, True, 1.0)  # saved before option ids
    at = open_page(start(), lesson.slug)
    assert not at.exception
    assert _rows(db) == [(lesson.slug, q.id, f'"{q.options[right].id}"')]
    assert at.radio(key=f"q:{lesson.slug}:{q.id}").value == q.options[right].text
    assert "Correct." in [s.value for s in at.success]
    assert to_option_ids(q, right) == q.options[right].id
    assert ProgressStore(db).migrate_responses("option-ids", lambda a: 0) == 0  # already done: nothing rewritten


# ------------------------------------------------------------ memory fallback
def test_answers_kept_in_memory_are_written_when_the_file_works_again(db):
    lesson, q = _first("sophia", "single")
    right = next(o.text for o in q.options if o.correct)
    ProgressStore(db).record("guest", "kfac", "earlier", "reflection", "saved before the outage", None, None)
    at = open_page(start(), lesson.slug)
    with unwritable(db):
        at.radio(key=f"q:{lesson.slug}:{q.id}").set_value(right)
        at = submit(at, f"form:{lesson.slug}:{q.id}")
        assert not at.exception and "Correct." in [s.value for s in at.success]  # kept in memory meanwhile
        assert any(w.value.startswith("Saving failed") for w in at.sidebar.warning)
        at = at.run()  # the next page while the file is still read-only: nothing changes
        assert any(w.value.startswith("Saving failed") for w in at.sidebar.warning)
        assert len(_rows(db)) == 1
    at = at.run()  # the file is writable again: the next run writes the pending answer
    assert not at.exception
    notes = [s.value for s in at.sidebar.success]
    assert notes == [f"The progress file works again: the 1 answer you gave while it could not be used is now "
                     f"saved in `{db}`."], notes
    assert not at.sidebar.warning
    rows = _rows(db)
    assert len(rows) == 2 and (lesson.slug, q.id, f'"{next(o.id for o in q.options if o.correct)}"') in rows
    at = at.run()  # said once; nothing written twice
    assert not at.sidebar.success and len(_rows(db)) == 2


def test_a_file_unusable_from_the_start_recovers_too(db):
    db.write_bytes(b"garbage" * 500)  # corrupt: the store cannot even be opened
    lesson, q = _first("damping", "single")
    right = next(o.text for o in q.options if o.correct)
    at = open_page(start(), lesson.slug)
    assert any("cannot be saved" in w.value for w in at.sidebar.warning)
    at.radio(key=f"q:{lesson.slug}:{q.id}").set_value(right)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert "Correct." in [s.value for s in at.success] and db.read_bytes() == b"garbage" * 500
    db.unlink()  # the operator moves the bad file aside
    at = at.run()
    assert any("works again" in s.value for s in at.sidebar.success)
    assert [r[:2] for r in _rows(db)] == [(lesson.slug, q.id)]


def test_a_file_read_only_from_the_start_still_shows_the_saved_answers(db):
    # Opening a store writes its schema, so a read-only file fell back to memory with none of the learner's
    # answers: their lessons showed 0 correct. The answers are now read from the file read-only.
    lesson, q = _first("damping", "single")
    right = next(o.id for o in q.options if o.correct)
    store = ProgressStore(db)
    store.record("guest", lesson.slug, q.id, "single", right, True, 1.0)
    with sqlite3.connect(db) as conn:  # as an operator might leave it: no WAL files beside it
        conn.execute("PRAGMA journal_mode=DELETE")
    with unwritable(db):
        at = open_page(start(), lesson.slug)
        assert not at.exception
        assert any("cannot be saved" in w.value for w in at.sidebar.warning)
        assert "Correct." in [s.value for s in at.success]  # the saved answer, graded again
        assert any(f"1 of {sum(x.kind != 'reflection' for x in lesson.questions)} graded questions correct" in str(p.text)
                   for p in at.progress), [p.text for p in at.progress]
    assert len(_rows(db)) == 1  # nothing written twice once the file works again
    at = at.run()
    assert len(_rows(db)) == 1
