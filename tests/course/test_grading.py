"""Grading rules, checked against hand-computed outcomes and properties."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from course.expr import ExpressionError, evaluate
from course.grading import ResponseError, grade, parse_number
from course.lessons import Option, Question


def single():
    return Question(id="s", kind="single", prompt="p", options=(
        Option("a", False, "no"), Option("b", True, "yes"), Option("c", False, "no")))


def multiple():
    return Question(id="m", kind="multiple", prompt="p", options=(
        Option("a", True, ""), Option("b", False, ""), Option("c", True, ""), Option("d", False, "")))


def numeric(answer=4.096, tol=0.05):
    return Question(id="n", kind="numeric", prompt="p", answer=answer, tolerance=tol, unit="GB")


def test_single_choice():
    assert grade(single(), 1).correct is True
    assert grade(single(), 0).correct is False
    assert grade(single(), 2).score == 0.0


@pytest.mark.parametrize("bad", [None, True, -1, 3, "1"])
def test_single_choice_rejects_bad_responses(bad):
    with pytest.raises(ResponseError):
        grade(single(), bad)


def test_multiple_choice_needs_exact_set_and_scores_partially():
    q = multiple()
    assert grade(q, [0, 2]).correct is True
    assert grade(q, [2, 0]).score == 1.0
    g = grade(q, [0])  # a, c correct; chose a only -> a,b,d right, c wrong
    assert g.correct is False and g.score == 0.75
    assert grade(q, [1, 3]).score == 0.0
    with pytest.raises(ResponseError):
        grade(q, [])
    with pytest.raises(ResponseError):
        grade(q, [7])


def test_numeric_tolerance_boundary():
    q = numeric(answer=10.0, tol=0.5)
    assert grade(q, "10.5").correct is True
    assert grade(q, "9.5").correct is True
    assert grade(q, "10.51").correct is False
    assert "10" in grade(q, "3").message and "GB" in grade(q, "3").message


@pytest.mark.parametrize("text,value", [("4.1", 4.1), (" 4096 ", 4096.0), ("4.1e9", 4.1e9),
                                        ("1,024", 1024.0), ("-0.5", -0.5), ("1 000 000", 1e6), (".25", 0.25)])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "4 GB", "four", "1,5", "nan", "inf", "1e999"])
def test_parse_number_rejects(text):
    with pytest.raises(ResponseError):
        parse_number(text)


@given(answer=st.floats(-1e6, 1e6), tol=st.floats(0, 100), delta=st.floats(-200, 200))
def test_numeric_matches_absolute_tolerance(answer, tol, delta):
    x = answer + delta
    assert grade(numeric(answer, tol), x).correct == (abs(x - answer) <= tol)


def test_reflection_is_saved_not_graded():
    q = Question(id="r", kind="reflection", prompt="p", reference="ref")
    g = grade(q, "my thoughts")
    assert g.correct is None and g.score is None
    with pytest.raises(ResponseError):
        grade(q, "   ")


# ------------------------------------------------------------------ expressions

def test_expression_factor_memory():
    assert evaluate("32000**2 * 4 / 1e9") == pytest.approx(4.096)
    assert evaluate("(4096*4096)**2") == 4096**4
    assert evaluate(3) == 3.0


@pytest.mark.parametrize("text", ["__import__('os')", "a + 1", "2 ** 10000", "1/0", "[1]", "True", "'x'"])
def test_expression_rejects_non_arithmetic(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


@given(a=st.integers(-10**6, 10**6), b=st.integers(1, 10**3), c=st.floats(-1e3, 1e3, allow_nan=False))
def test_expression_agrees_with_python(a, b, c):
    text = f"({a} + {c!r}) * {b} - {a} / {b}"
    assert math.isclose(evaluate(text), (a + c) * b - a / b, rel_tol=1e-12, abs_tol=1e-9)
