"""Grade a learner's response to a question.

Rules (the same for every lesson):

* single choice: correct when the one chosen option is the correct one;
* multiple choice: correct when the chosen set equals the set of correct
  options; the score is the fraction of options classified rightly
  (chosen-and-correct or unchosen-and-wrong), so partial knowledge shows;
* numeric: correct when ``|x - answer| <= tolerance``; the learner may type the
  question's unit after the number ("4.1 GB"), or a unit that converts to it
  (bytes in SI or binary multiples: "4.1e9 bytes", "3.8 GiB" for a GB question);
* reflection: not graded; the response is kept and the learner rates it.

Choice responses name options by their stable id (``Option.id``), so an author
may reorder options without changing what a saved answer means. An integer is
read as a position in the current order (how answers were saved before option
ids; :func:`to_option_ids` converts them). A saved response that no longer
fits its question (it names an option that was removed or edited) is *stale*:
:func:`regrade` returns None for it and the course ignores it.
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


_EXAMPLE = "Enter a number such as 4.1, 4096, 4.1e9 or 4.1 × 10^9"
_NOT_A_NUMBER = _EXAMPLE + " (a unit may follow it: 4.1 GB)."
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")


def _normalise(text: str) -> str:
    """The typographic minus as '-', and a power of ten written with superscripts ('10⁹') as '10^9'."""
    text = str(text).replace("\u2212", "-")
    return re.sub(r"10([⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "10^" + m.group(1).translate(_SUPERSCRIPTS), text)


def parse_number(text: str) -> float:
    """Parse a learner's number: '4.1', '4,096', '1,073.7', '4.1e9', '4.1 × 10^9', '4.1·10⁹', '10^9', '1/4',
    '1 024', '−0.5'."""
    cleaned = _normalise(text).strip().replace(" ", "").replace("_", "")
    fraction = re.fullmatch(r"([+-]?\d+)/(\d+)", cleaned)
    if fraction:
        if int(fraction[2]) == 0:
            raise ResponseError("A fraction needs a denominator other than 0.")
        return int(fraction[1]) / int(fraction[2])
    power = re.fullmatch(r"(?:(.+?)[×x*·])?10(?:\^|\*\*)([+-]?\d+)", cleaned, flags=re.IGNORECASE)
    mantissa, exponent = (power[1] or "1", power[2]) if power else (cleaned, None)
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", mantissa):  # thousands separated by commas
        mantissa = mantissa.replace(",", "")
    if not _NUMBER.match(mantissa) or (exponent is not None and re.search("[eE]", mantissa)):
        raise ResponseError(_NOT_A_NUMBER)
    try:
        value = float(mantissa if exponent is None else f"{mantissa}e{int(exponent)}")
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ResponseError("Enter a finite number.")
    return value


# bytes per unit, keyed by the lower-cased unit: SI multiples (kB = 1000 B) and binary ones (KiB = 1024 B)
_BYTES = {"b": 1, "byte": 1, "bytes": 1}
for _i, (_si, _bin, _word) in enumerate(zip("kmgtpe", ("kib", "mib", "gib", "tib", "pib", "eib"),
                                             ("kilo", "mega", "giga", "tera", "peta", "exa"), strict=True), start=1):
    _BYTES[f"{_si}b"] = 1000**_i
    _BYTES[f"{_word}byte"] = _BYTES[f"{_word}bytes"] = 1000**_i
    _BYTES[_bin] = 1024**_i
    _BYTES[f"{_bin[:2]}bibyte"] = _BYTES[f"{_bin[:2]}bibytes"] = 1024**_i
_NUMBER_PREFIX = re.compile(r"""\s*[+-]?(?:
      \d+\s*/\s*\d+                                                 # a fraction: 1/4
    | 10\s*(?:\^|\*\*)\s*[+-]?\d+                                   # a power of ten: 10^9
    | [\d.,_ ]*(?:[eE][+-]?\d+)?(?:\s*[×xX*·]\s*10\s*(?:\^|\*\*)\s*[+-]?\d+)?  # 4.1e9, 4.1 × 10^9
    )""", re.VERBOSE)


def _unit_key(unit: str) -> str:
    """A unit as compared: lower case, no spaces, no enclosing parentheses."""
    key = "".join(unit.lower().split())
    while key.startswith("(") and key.endswith(")"):
        key = key[1:-1]
    return key


def _has_unit(unit: str) -> bool:
    """Whether a question's answer carries a unit (not a plain or 'dimensionless' number)."""
    return _unit_key(unit) not in ("", "dimensionless")


def same_unit(a: str, b: str) -> bool:
    """Two spellings of one unit: equal keys, or one is the other's plural ('block', 'blocks')."""
    ka, kb = _unit_key(a), _unit_key(b)
    # (a plural needs a unit to be the plural of: "s" is not the plural of no unit, nor "%s" of "%")
    return ka == kb or (ka.isalpha() and kb.isalpha() and (ka + "s" == kb or kb + "s" == ka))


def split_unit(text: str) -> tuple[str, str]:
    """``text`` split into its number and the unit typed after it: '4.1e9 bytes' ->
    ('4.1e9', 'bytes'); '4 EB' -> ('4', 'EB'); '12%' -> ('12', '%'); '4.1 × 10⁹ B' -> ('4.1 × 10^9', 'B')."""
    text = _normalise(text)
    end = _NUMBER_PREFIX.match(text).end()
    return text[:end].strip(), text[end:].strip()


def to_unit(value: float, typed: str, unit: str) -> float:
    """``value`` given in the unit ``typed`` expressed in the question's ``unit``; raises
    :class:`ResponseError` when ``typed`` is neither that unit nor converts to it."""
    if not typed or same_unit(typed, unit):
        return value
    have, want = _BYTES.get(_unit_key(typed)), _BYTES.get(_unit_key(unit))
    if have is not None and want is not None:
        return value * have / want
    if want is not None:
        raise ResponseError(f"This answer is in {unit}; '{typed}' does not convert to it. Type the number alone "
                            "(in " + unit + "), or with a unit of bytes: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB.")
    if not _has_unit(unit):
        raise ResponseError(f"This answer is a plain number without a unit; type it without '{typed}'.")
    raise ResponseError(f"This answer is in {unit}; '{typed}' is not that unit. Type the number alone.")


def parse_quantity(text: str, unit: str = "") -> float:
    """A learner's number, with an optional unit after it, in the question's ``unit``:
    '4.1 GB' -> 4.1, '4.1e9 bytes' -> 4.1, '134 MB' -> 0.134 for a GB question."""
    number, typed = split_unit(text)
    if not number:
        raise ResponseError(_EXAMPLE + (f", in {unit}." if _has_unit(unit) else "."))
    try:
        value = parse_number(number)
    except ResponseError as exc:
        if str(exc) != _NOT_A_NUMBER:  # (not finite, a fraction over 0: said as it is)
            raise
        # the example follows the question: a unit after the number only where the question has one
        raise ResponseError(_EXAMPLE + (f" (a unit may follow it: 4.1 {unit})." if _has_unit(unit)
                                        else ", without a unit.")) from None
    return to_unit(value, typed, unit)


def _index(question: Question, choice) -> int:
    """The position of the option named by ``choice`` (an option id, or a legacy position)."""
    if isinstance(choice, str):
        for i, o in enumerate(question.options):
            if o.id == choice:
                return i
        raise ResponseError("the option it names is no longer one of this question's options")
    if isinstance(choice, bool) or not isinstance(choice, int):
        raise ResponseError("That is not an option of this question.")
    if not 0 <= choice < len(question.options):
        raise ResponseError(f"it names option {choice + 1}, and this question has {len(question.options)}")
    return choice


def chosen_ids(question: Question, response) -> list[str]:
    """The ids of the options a single- or multiple-choice ``response`` names, in the
    question's order; raises :class:`ResponseError` when one does not exist."""
    if question.kind == "single":
        if response is None:
            raise ResponseError("Choose one option first.")
        return [question.options[_index(question, response)].id]
    if isinstance(response, (str, bytes)) or not hasattr(response, "__iter__"):
        raise ResponseError("A multiple-choice answer is a list of options.")
    chosen = {_index(question, c) for c in response}
    return [o.id for i, o in enumerate(question.options) if i in chosen]


def to_option_ids(question: Question, response):
    """``response`` with option positions replaced by option ids (unchanged when it
    already uses ids or is not a choice response); raises :class:`ResponseError`
    for a position that does not exist."""
    if question.kind == "single" and isinstance(response, int) and not isinstance(response, bool):
        return chosen_ids(question, response)[0]
    if question.kind == "multiple" and isinstance(response, list) and any(isinstance(c, int) for c in response):
        return chosen_ids(question, response)
    return response


def grade(question: Question, response) -> Grade:
    """Grade ``response`` for ``question``.

    ``response`` is an option id (single), a collection of option ids (multiple),
    a number or numeric text (numeric) or text (reflection). Option positions
    (ints) are accepted too.
    """
    kind = question.kind
    if kind == "single":
        if response is None or isinstance(response, bool) or not isinstance(response, (int, str)):
            raise ResponseError("Choose one option first.")
        ok = question.options[_index(question, response)].correct
        return Grade(ok, 1.0 if ok else 0.0, "Correct." if ok else "Not quite.")
    if kind == "multiple":
        if response is not None and (isinstance(response, (str, bytes)) or not hasattr(response, "__iter__")):
            raise ResponseError("A multiple-choice answer is a list of options.")
        chosen = {_index(question, c) for c in (response or ())}
        if not chosen:
            raise ResponseError("Choose at least one option first.")
        right = {i for i, o in enumerate(question.options) if o.correct}
        agree = sum((i in chosen) == (i in right) for i in range(len(question.options)))
        ok = chosen == right
        score = agree / len(question.options)
        msg = "Correct." if ok else f"Not quite: {agree} of {len(question.options)} options right: {score:.2f}."
        return Grade(ok, score, msg)
    if kind == "numeric":
        if response is None or (isinstance(response, str) and not response.strip()):
            raise ResponseError("Enter a number first.")
        if isinstance(response, str):
            value = parse_quantity(response, question.unit)
        elif isinstance(response, (int, float)) and not isinstance(response, bool) and _finite(response):
            value = float(response)
        else:  # a saved row written by another tool: a list, a bool, an integer beyond any float
            raise ResponseError("That is not a number.")
        # (a hair of slack: 1.073741824 + 0.02 is a rounding above 1.093741824, and an answer exactly at the
        # stated tolerance is right)
        ok = abs(value - question.answer) <= question.tolerance * (1 + 1e-9) + 1e-12 * abs(question.answer)
        unit = f" {question.unit}" if question.unit else ""
        expected = f"{question.answer:.6g}{unit} (within ±{question.tolerance:g}{unit})"
        # a wrong answer is not told the right one: course.quiz decides when that is shown
        msg = f"Correct: {expected}." if ok else f"Not quite: you entered {value:g}{unit}."
        return Grade(ok, 1.0 if ok else 0.0, msg)
    if kind == "reflection":
        if not isinstance(response, str) or not response.strip():
            raise ResponseError("Write your answer first.")
        return Grade(None, None, "Saved. Compare it with the reference answer below.")
    raise ResponseError(f"unknown question kind {kind!r}")


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an int beyond any float
        return False


def regrade(question: Question, kind: str, response) -> Grade | None:
    """The grade of a *saved* response against the question as it is now, or None
    when the response is stale: saved for another kind of question, or naming an
    option that no longer exists."""
    if kind != question.kind:
        return None
    try:
        return grade(question, response)
    except ResponseError:
        return None


def stale_reason(question: Question, kind: str, response) -> str:
    """Why :func:`regrade` found a saved response stale, in words for the learner."""
    if kind != question.kind:
        return f"it was saved for a {kind} question and this one is now {question.kind}"
    try:
        grade(question, response)
    except ResponseError as exc:
        return str(exc)
    return "it fits the question"
