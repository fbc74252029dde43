"""Every page of the app runs in AppTest; quizzes are answered and graded."""

from __future__ import annotations

import pytest

from course.lessons import load_lessons
from course.progress import ENV_VAR, ProgressStore
from tests.app.helpers import open_page, start, submit, texts
from views import labs
from views.labs import LABS
from views.labs.common import MISSED

LESSONS = load_lessons()


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "progress.sqlite3"
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def test_home_page(db):
    at = start()
    assert not at.exception
    assert at.title[0].value == "Natural Gradient in Deep Learning"
    assert at.sidebar.text_input(key="learner").value == "guest"
    side = "\n".join(str(c.value) for c in at.sidebar.caption)
    # the server's first page does not wait for torch: the device is named once the warm-up has imported it
    # (whether it had, depends on what this test process imported before)
    assert ("torch 2.13.0" in side or "the device is being detected" in side) and str(db) in side
    assert labs.warm_up().join(120) is None and not labs.warming()
    at = at.run()
    assert "torch 2.13.0" in "\n".join(str(c.value) for c in at.sidebar.caption)
    # the learning path links every lesson
    all_text = texts(at)
    for lesson in LESSONS:
        assert lesson.summary in all_text


def test_notation_page(db):
    at = open_page(start(), "notation")
    assert not at.exception, at.exception
    assert at.title[0].value == "Notation"
    body = texts(at)
    assert r"$\Gamma = \mathbb{E}[e e^\top]$" in body and "134 MB (128 MiB" in body


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda x: x.slug)
def test_lesson_page(db, lesson):
    MISSED.clear()
    at = open_page(start(), lesson.slug)
    assert not at.exception, at.exception
    # every lab opens with its figure: its opening settings' results are shipped (views/labs/defaults)
    assert not MISSED, f"not shipped (run python scripts/lab_defaults.py): {sorted(MISSED)}"
    assert lesson.title in at.title[0].value
    submit_buttons = [b for b in at.button if b.form_id.startswith(f"form:{lesson.slug}:")]
    assert len(submit_buttons) == len(lesson.questions)
    body = texts(at)
    for lab in lesson.labs:
        assert lab.title in body
    placeholders = [c for c in at.caption if "Not built yet" in str(c.value)]
    assert len(placeholders) == len([lab for lab in lesson.labs if lab.id not in LABS])
    assert "Sources" in [h.value for h in at.header]
    for source in lesson.sources:
        assert source.cite in body


def _first(lesson_slug, kind):
    lesson = next(x for x in LESSONS if x.slug == lesson_slug)
    return lesson, next(q for q in lesson.questions if q.kind == kind)


def test_single_choice_graded_and_saved(db):
    lesson, q = _first("kfac", "single")
    at = open_page(start(), lesson.slug)
    right = next(o.text for o in q.options if o.correct)
    wrong = next(o.text for o in q.options if not o.correct)
    at.radio(key=f"q:{lesson.slug}:{q.id}").set_value(wrong)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert not at.exception
    assert any(e.value.startswith("Not quite. Try again.") for e in at.error)
    at.radio(key=f"q:{lesson.slug}:{q.id}").set_value(right)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert "Correct." in [e.value for e in at.success]
    for o in q.options:  # every option's explanation is shown after answering
        assert o.explanation in texts(at)
    attempts = ProgressStore(db).attempts("guest")
    assert [(a.question, a.correct) for a in attempts] == [(q.id, False), (q.id, True)]


def test_multiple_choice_and_numeric(db):
    lesson, q = _first("shampoo", "numeric")
    at = open_page(start(), lesson.slug)
    at.text_input(key=f"q:{lesson.slug}:{q.id}").input("four gigabytes")
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert any("Enter a number" in w.value for w in at.warning)
    assert ProgressStore(db).attempts("guest") == []
    at.text_input(key=f"q:{lesson.slug}:{q.id}").input(f"{q.answer:.6g}")
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert any(s.value.startswith("Correct") for s in at.success)

    lesson, q = _first("kfac", "multiple")
    at = open_page(at, lesson.slug)
    for o in q.options:
        at.checkbox(key=f"q:{lesson.slug}:{q.id}:{o.id}").set_value(o.correct)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert not at.exception
    latest = ProgressStore(db).latest("guest")
    assert latest[(lesson.slug, q.id)].correct is True


def test_reflection_saved_reference_revealed_and_rated(db):
    lesson, q = _first("summary", "reflection")
    at = open_page(start(), lesson.slug)
    assert q.reference not in texts(at)
    at.text_area(key=f"q:{lesson.slug}:{q.id}").input("Sharding spreads the factors over workers.")
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert q.reference in [i.value for i in at.info]
    at.radio(key=f"rating:{lesson.slug}:{q.id}").set_value(2)
    at = submit(at, f"rate:{lesson.slug}:{q.id}")
    a = ProgressStore(db).latest("guest")[(lesson.slug, q.id)]
    assert a.response == "Sharding spreads the factors over workers." and a.self_rating == 2


def test_progress_page_export_and_reset(db):
    ProgressStore(db).record("guest", "kfac", "x", "single", 0, True, 1.0)
    ProgressStore(db).record("ada", "kfac", "x", "single", 0, True, 1.0)
    at = open_page(start(), "progress")
    assert not at.exception
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download JSON", "Download CSV"]
    at.checkbox[0].check()
    at = submit(at, "reset")
    assert any("Deleted 1 saved answers of guest" in s.value for s in at.success)
    assert ProgressStore(db).attempts("guest") == [] and len(ProgressStore(db).attempts("ada")) == 1


def test_learners_are_kept_apart(db):
    lesson, q = _first("damping", "single")
    at = start()
    at.sidebar.text_input(key="learner").input("  Ada   Lovelace ")
    at = open_page(at.run(), lesson.slug)
    right = next(o.text for o in q.options if o.correct)
    at.radio(key=f"q:{lesson.slug}:{q.id}").set_value(right)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    store = ProgressStore(db)
    assert len(store.attempts("Ada Lovelace")) == 1 and store.attempts("guest") == []


def test_corrupt_database_keeps_the_course_working(db):
    db.write_bytes(b"garbage" * 500)
    lesson, q = _first("sophia", "single")
    at = open_page(start(), lesson.slug)
    assert not at.exception
    assert any("cannot be saved" in w.value for w in at.sidebar.warning)
    right = next(o.text for o in q.options if o.correct)
    at.radio(key=f"q:{lesson.slug}:{q.id}").set_value(right)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    assert not at.exception and "Correct." in [s.value for s in at.success]
    assert db.read_bytes() == b"garbage" * 500
