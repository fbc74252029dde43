"""Quizzes that teach: what a learner's answers to one question add up to.

The rules (the same for every question):

* A wrong answer is met with "try again": the learner sees the explanation of the
  option(s) they chose, and for a multiple-choice question how many options they
  classified rightly, never which option is right; a wrong number is not told the
  exact answer.
* The right answer is revealed after :data:`REVEAL_AFTER` wrong answers, or when
  the learner asks for it ("Show answer", saved as a row of kind
  :data:`course.progress.REVEAL`).
* Progress is honest about what the learner did. A graded question is
  *correct* when its latest answer is right and was given before the answer was
  revealed; *revealed* when the learner saw the answer (whatever they answered
  after it); *tried* when they answered wrongly and have not seen the answer;
  *unanswered* otherwise. A reflection is *written* once saved.

Everything here is pure (no Streamlit): the widgets draw what it decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from course.grading import Grade, ResponseError, chosen_ids, parse_quantity, regrade, same_unit, split_unit
from course.lessons import Question
from course.progress import REVEAL, Attempt

REVEAL_AFTER = 2  # wrong answers after which the right one is shown
STATUSES = ("unanswered", "tried", "correct", "revealed", "written")


@dataclass(frozen=True)
class QuestionState:
    """One question as the learner left it."""

    answer: Attempt | None  # the latest answer that fits the question as it is now
    grade: Grade | None  # of ``answer``
    stale: Attempt | None  # the latest answer when it no longer fits the question (ignored)
    wrong: int  # wrong answers (that fit the question) so far
    revealed: bool  # the right answer has been shown
    asked: bool  # ... because the learner pressed "Show answer" (else after REVEAL_AFTER wrong answers)
    status: str  # one of STATUSES

    @property
    def tries_left(self) -> int:
        """Wrong answers still allowed before the answer is shown."""
        return max(0, REVEAL_AFTER - self.wrong)


def question_state(q: Question, rows: Sequence[Attempt] | Attempt | None) -> QuestionState:
    """The state of ``q`` from its rows (the learner's answers and reveal rows, oldest
    first); a single Attempt or None is accepted as a one-row history or none."""
    if rows is None:
        rows = []
    elif isinstance(rows, Attempt):
        rows = [rows]
    answer = grade = stale = None
    at = revealed_at = None
    asked = False
    wrong = 0
    for i, a in enumerate(rows):
        if a.kind == REVEAL:
            if revealed_at is None:
                revealed_at, asked = i, True
            continue
        g = regrade(q, a.kind, a.response)
        if g is None:
            answer = grade = at = None
            stale = a
            continue
        answer, grade, at, stale = a, g, i, None
        if q.graded and not g.correct:
            wrong += 1
            if wrong >= REVEAL_AFTER and revealed_at is None:
                revealed_at = i
    if not q.graded:
        status = "written" if answer is not None else "unanswered"
    elif grade is not None and grade.correct and (revealed_at is None or revealed_at > at):
        status = "correct"
    elif revealed_at is not None:
        status = "revealed"
    else:
        status = "tried" if answer is not None else "unanswered"
    return QuestionState(answer, grade, stale, wrong, revealed_at is not None, asked, status)


# --------------------------------------------------------------------------- words


def options_right(q: Question, response) -> tuple[int, int]:
    """For a multiple-choice ``response``: (options classified rightly, options)."""
    chosen = set(chosen_ids(q, response))
    return sum((o.id in chosen) == o.correct for o in q.options), len(q.options)


def partial_credit(q: Question, response) -> str:
    """'3 of 4 options right: 0.75' for a multiple-choice answer."""
    right, n = options_right(q, response)
    return f"{right} of {n} options right: {right / n:.2f}"


def expected(q: Question) -> str:
    """The answer to a numeric question, with its tolerance: '4.1 GB (within ±0.05 GB)'."""
    unit = f" {q.unit}" if q.unit else ""
    return f"{q.answer:.6g}{unit} (within ±{q.tolerance:g}{unit})"


def entered(q: Question, response) -> str:
    """What the learner entered for a numeric question, converted when they typed another
    unit: '128 MiB = 134.218 MB'."""
    text = str(response).strip()
    _, typed = split_unit(text)
    if not typed or same_unit(typed, q.unit):
        return text
    try:
        value = parse_quantity(text, q.unit)
    except ResponseError:
        return text
    return f"{text} = {value:.6g} {q.unit}"


def direction(q: Question, response) -> str:
    """'too high' or 'too low' for a wrong numeric answer (empty when it cannot be read)."""
    try:
        value = parse_quantity(str(response), q.unit)
    except ResponseError:
        return ""
    return "too high" if value > q.answer else "too low"


def summary_text(states: Sequence[QuestionState]) -> str:
    """'2 correct, 1 answer shown, 1 to try again' for a set of graded questions."""
    counts = {s: sum(x.status == s for x in states) for s in STATUSES}
    parts = [f"{counts['correct']} correct"]
    if counts["revealed"]:
        parts.append(f"{counts['revealed']} answer{'s' if counts['revealed'] != 1 else ''} shown")
    if counts["tried"]:
        parts.append(f"{counts['tried']} to try again")
    return ", ".join(parts)
