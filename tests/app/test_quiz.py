"""Quizzes that teach, and who the learner is, driven through AppTest:

* a wrong choice says "try again" with the chosen option's explanation and marks
  no option right; the answer is revealed after a second wrong try or a "Show
  answer" click, and the click is recorded as a reveal, not as correct;
* multiple choice shows its partial credit; a wrong number is not told the answer;
* a new entry that cannot be graded never stands next to the older answer's "Correct";
* every question is filled from the saved answer (after a new session, or a change of name);
* ``?learner=`` in the URL names the learner.
"""

from __future__ import annotations

import pytest

from course.lessons import load_lessons
from course.progress import ENV_VAR, REVEAL, ProgressStore
from course.quiz import question_state
from tests.app.helpers import APP, TIMEOUT, open_page, start, submit, texts

LESSONS = {x.slug: x for x in load_lessons()}


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "progress.sqlite3"
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def _first(slug, kind, pred=lambda q: True):
    lesson = LESSONS[slug]
    return lesson, next(q for q in lesson.questions if q.kind == kind and pred(q))


def _block(at, lesson, q) -> str:
    """The text of the page without the lesson body: feedback lives in alerts and lists."""
    return "\n".join(str(e.value) for kind in ("success", "error", "info", "warning")
                     for e in getattr(at, kind))


def test_wrong_choice_teaches_then_reveals_after_a_second_try(db):
    lesson, q = _first("kfac", "single", lambda q: sum(not o.correct for o in q.options) >= 2)
    key, form = f"q:{lesson.slug}:{q.id}", f"form:{lesson.slug}:{q.id}"
    right = next(o for o in q.options if o.correct)
    wrong = [o for o in q.options if not o.correct]
    at = open_page(start(), lesson.slug)
    at.radio(key=key).set_value(wrong[0].text)
    at = submit(at, form)
    alerts = _block(at, lesson, q)
    assert "Not quite. Try again." in alerts and "after 1 more wrong answer" in alerts
    shown = texts(at)
    assert wrong[0].explanation in shown            # the explanation of the option chosen
    assert right.explanation not in shown           # ... and nothing that marks the right one
    assert not q.explanation or q.explanation not in alerts
    assert any(b.label == "Show answer" for b in at.button)
    at.radio(key=key).set_value(wrong[1].text)
    at = submit(at, form)
    shown = texts(at)
    assert right.explanation in shown and f"**{right.text}**" in shown  # revealed, marked right
    assert any("The answer (after 2 wrong answers)" in i.value for i in at.info)
    assert not any(b.label == "Show answer" for b in at.button)
    at.radio(key=key).set_value(right.text)
    at = submit(at, form)
    assert any("after the answer was shown" in s.value for s in at.success)
    rows = ProgressStore(db).history("guest")[(lesson.slug, q.id)]
    assert [a.correct for a in rows] == [False, False, True]
    assert question_state(q, rows).status == "revealed"  # not counted as correct on their own
    bars = [b.proto.text for b in at.get("progress")]
    assert f"0 of {len(lesson.graded_questions)} graded questions correct, 1 answer shown" in "\n".join(bars), bars


def test_show_answer_is_recorded_as_a_reveal_and_partial_credit_is_shown(db):
    lesson, q = _first("kfac", "multiple", lambda q: len(q.options) >= 3)
    keys = {o.id: f"q:{lesson.slug}:{q.id}:{o.id}" for o in q.options}
    at = open_page(start(), lesson.slug)
    # choose exactly the correct options but one: every option but that one classified rightly
    miss = next(o for o in q.options if o.correct)
    for o in q.options:
        at.checkbox(key=keys[o.id]).set_value(o.correct and o is not miss)
    at = submit(at, f"form:{lesson.slug}:{q.id}")
    n = len(q.options)
    assert any(f"Not quite: {n - 1} of {n} options right: {(n - 1) / n:.2f}." in e.value for e in at.error)
    assert miss.explanation not in texts(at)
    button = next(b for b in at.button if b.label == "Show answer")
    at = button.click().run()
    assert not at.exception
    assert any("The answer (you asked for it)" in i.value for i in at.info)
    assert miss.explanation in texts(at)
    rows = ProgressStore(db).history("guest")[(lesson.slug, q.id)]
    assert [a.kind for a in rows] == ["multiple", REVEAL] and rows[-1].correct is None
    assert ProgressStore(db).latest("guest")[(lesson.slug, q.id)].kind == "multiple"  # answers, not reveals


def test_wrong_number_is_not_told_the_answer_and_units_are_understood(db):
    lesson, q = _first("shampoo", "numeric", lambda q: q.unit == "GB")
    key, form = f"q:{lesson.slug}:{q.id}", f"form:{lesson.slug}:{q.id}"
    at = open_page(start(), lesson.slug)
    at.text_input(key=key).input(f"{q.answer * 3:.6g} GB")
    at = submit(at, form)
    said = _block(at, lesson, q)
    assert "is too high" in said and "Try again" in said
    assert f"{q.answer:.6g}" not in said  # the exact answer is not given away
    at.text_input(key=key).input(f"{q.answer * 1e9:.6g} bytes")  # the right answer in another unit
    at = submit(at, form)
    assert any(s.value.startswith("Correct") for s in at.success)
    # an entry that cannot be graded never stands next to the older answer's "Correct"
    at.text_input(key=key).input("four gigabytes")
    at = submit(at, form)
    assert any("Enter a number" in w.value for w in at.warning)
    assert not any(s.value.startswith("Correct") for s in at.success)
    at = at.run()  # still so on the next run of the page
    assert not any(s.value.startswith("Correct") for s in at.success)
    assert at.text_input(key=key).value == "four gigabytes"


def test_saved_answers_fill_the_questions_for_their_learner(db):
    lesson = LESSONS["summary"]
    single = next(q for q in lesson.questions if q.kind == "single")
    multiple = next((q for q in lesson.questions if q.kind == "multiple"), None)
    numeric = next(q for q in lesson.questions if q.kind == "numeric")
    reflection = next(q for q in lesson.questions if q.kind == "reflection")
    s = ProgressStore(db)
    pick = single.options[-1]
    s.record("ada", lesson.slug, single.id, "single", pick.id, pick.correct, float(pick.correct))
    s.record("ada", lesson.slug, numeric.id, "numeric", "12.5 GB", False, 0.0)
    s.record("ada", lesson.slug, reflection.id, "reflection", "My *own* words.", None, None)
    if multiple is not None:
        s.record("ada", lesson.slug, multiple.id, "multiple", [multiple.options[0].id], False, 0.5)
    at = open_page(start(), lesson.slug)  # as guest: nothing filled in
    assert at.radio(key=f"q:{lesson.slug}:{single.id}").value is None
    assert at.text_area(key=f"q:{lesson.slug}:{reflection.id}").value == ""
    at.sidebar.text_input(key="learner").input("ada")
    at = at.run()
    assert at.radio(key=f"q:{lesson.slug}:{single.id}").value == pick.text
    assert at.text_input(key=f"q:{lesson.slug}:{numeric.id}").value == "12.5 GB"
    assert at.text_area(key=f"q:{lesson.slug}:{reflection.id}").value == "My *own* words."
    if multiple is not None:
        assert at.checkbox(key=f"q:{lesson.slug}:{multiple.id}:{multiple.options[0].id}").value is True
        assert at.checkbox(key=f"q:{lesson.slug}:{multiple.id}:{multiple.options[1].id}").value is False
    # the learner's reflection is shown as typed beside the reference answer
    assert "My *own* words." in [t.value for t in at.text]
    assert reflection.reference in [i.value for i in at.info]
    at.sidebar.text_input(key="learner").input("bob")  # another learner: the boxes are emptied
    at = at.run()
    assert at.radio(key=f"q:{lesson.slug}:{single.id}").value is None
    assert at.text_input(key=f"q:{lesson.slug}:{numeric.id}").value == ""


def test_the_learner_comes_from_the_url(db):
    lesson, q = _first("damping", "single")
    right = next(o for o in q.options if o.correct)
    ProgressStore(db).record("Ada L", lesson.slug, q.id, "single", right.id, True, 1.0)
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["learner"] = "Ada L"
    at = open_page(at.run(), lesson.slug)
    assert not at.exception, at.exception
    assert at.sidebar.text_input(key="learner").value == "Ada L"
    assert at.radio(key=f"q:{lesson.slug}:{q.id}").value == right.text
    assert "Correct." in [s.value for s in at.success]
