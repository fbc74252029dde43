"""Grade a learner's response to a question.

Rules (the same for every lesson):

* single choice: correct when the one chosen option is the correct one;
* multiple choice: correct when the chosen set equals the set of correct
  options; the score is the fraction of options classified rightly
  (chosen-and-correct or unchosen-and-wrong), so partial knowledge shows;
* numeric: correct when ``|x - answer| <= tolerance``;
* reflection: not graded; the response is kept and the learner rates it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from course.lessons import Question


class ResponseError(ValueError):
    """The response cannot be graded (nothing chosen, not a number, ...)."""


@dataclass(frozen=True)
class Grade:
    correct: bool | None  # None for reflection questions
    score: float | None
    message: str


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_number(text: str) -> float:
    """Parse a learner's number: '4.1', '4,096', '4.1e9', '1 024'."""
    cleaned = str(text).strip().replace(" ", "").replace("_", "")
    if cleaned.count(",") and "." not in cleaned and re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+", cleaned):
        cleaned = cleaned.replace(",", "")
    if not _NUMBER.match(cleaned):
        raise ResponseError("Enter a plain number such as 4.1, 4096 or 4.1e9 (no units).")
    value = float(cleaned)
    if not math.isfinite(value):
        raise ResponseError("Enter a finite number.")
    return value


def grade(question: Question, response) -> Grade:
    """Grade ``response`` for ``question``.

    ``response`` is an option index (single), a collection of option indices
    (multiple), a number or numeric text (numeric) or text (reflection).
    """
    kind = question.kind
    if kind == "single":
        if response is None or isinstance(response, bool) or not isinstance(response, int):
            raise ResponseError("Choose one option first.")
        if not 0 <= response < len(question.options):
            raise ResponseError("That option does not exist.")
        ok = question.options[response].correct
        return Grade(ok, 1.0 if ok else 0.0, "Correct." if ok else "Not quite.")
    if kind == "multiple":
        chosen = set(response or ())
        if not chosen:
            raise ResponseError("Choose at least one option first.")
        if not chosen <= set(range(len(question.options))):
            raise ResponseError("That option does not exist.")
        right = {i for i, o in enumerate(question.options) if o.correct}
        agree = sum((i in chosen) == (i in right) for i in range(len(question.options)))
        ok = chosen == right
        score = agree / len(question.options)
        msg = "Correct." if ok else f"Not quite: {agree} of {len(question.options)} options classified rightly."
        return Grade(ok, score, msg)
    if kind == "numeric":
        if response is None or (isinstance(response, str) and not response.strip()):
            raise ResponseError("Enter a number first.")
        value = parse_number(response) if isinstance(response, str) else float(response)
        ok = abs(value - question.answer) <= question.tolerance
        unit = f" {question.unit}" if question.unit else ""
        expected = f"{question.answer:.6g}{unit} (within ±{question.tolerance:g}{unit})"
        msg = f"Correct: {expected}." if ok else f"Not quite: the answer is {expected}; you entered {value:g}{unit}."
        return Grade(ok, 1.0 if ok else 0.0, msg)
    if kind == "reflection":
        if not isinstance(response, str) or not response.strip():
            raise ResponseError("Write your answer first.")
        return Grade(None, None, "Saved. Compare it with the reference answer below.")
    raise ResponseError(f"unknown question kind {kind!r}")
