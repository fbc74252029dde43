"""course.quiz: when an answer is revealed and what progress counts, against hand-written histories."""

from __future__ import annotations

import pytest

from course.lessons import Option, Question
from course.progress import REVEAL, Attempt
from course.quiz import REVEAL_AFTER, entered, expected, partial_credit, question_state

Q = Question(id="s", kind="single", prompt="p", options=(
    Option("a", False, "no", id="a"), Option("b", True, "yes", id="b"), Option("c", False, "no", id="c")))
M = Question(id="m", kind="multiple", prompt="p", options=(
    Option("a", True, "", id="a"), Option("b", False, "", id="b"), Option("c", True, "", id="c"),
    Option("d", False, "", id="d")))
N = Question(id="n", kind="numeric", prompt="p", answer=4.096, tolerance=0.05, unit="GB")


def _rows(*entries, q=Q):
    """Rows from ('answer', response) and ('reveal',) entries, graded like the app records them."""
    from course.grading import grade

    out = []
    for i, e in enumerate(entries):
        if e[0] == "reveal":
            out.append(Attempt(i, "x", "l", q.id, REVEAL, None, None, None, None, ""))
        else:
            g = grade(q, e[1])
            out.append(Attempt(i, "x", "l", q.id, q.kind, e[1], g.correct, g.score, None, ""))
    return out


@pytest.mark.parametrize("entries,status,revealed,wrong", [
    ((), "unanswered", False, 0),
    ((("answer", "b"),), "correct", False, 0),
    ((("answer", "a"),), "tried", False, 1),
    ((("answer", "a"), ("answer", "b")), "correct", False, 1),            # right at the second try
    ((("answer", "a"), ("answer", "c")), "revealed", True, 2),            # two wrong: shown
    ((("answer", "a"), ("answer", "c"), ("answer", "b")), "revealed", True, 2),  # right only after seeing it
    ((("answer", "a"), ("reveal",)), "revealed", True, 1),               # asked to see it
    ((("answer", "a"), ("reveal",), ("answer", "b")), "revealed", True, 1),
    ((("answer", "b"), ("answer", "a")), "tried", False, 1),              # the latest answer counts
])
def test_status_follows_the_rules(entries, status, revealed, wrong):
    s = question_state(Q, _rows(*entries))
    assert (s.status, s.revealed, s.wrong) == (status, revealed, wrong)
    assert s.tries_left == max(0, REVEAL_AFTER - wrong)


def test_reveal_by_request_is_told_apart_from_reveal_by_tries():
    assert question_state(Q, _rows(("answer", "a"), ("reveal",))).asked is True
    assert question_state(Q, _rows(("answer", "a"), ("answer", "c"))).asked is False


def test_a_stale_latest_answer_is_ignored_not_graded():
    rows = _rows(("answer", "b"))
    stale = Attempt(9, "x", "l", Q.id, Q.kind, "removed-option", True, 1.0, None, "")
    s = question_state(Q, rows + [stale])
    assert s.stale is stale and s.answer is None and s.status == "unanswered"


def test_words_for_partial_credit_and_numbers():
    assert partial_credit(M, ["a"]) == "3 of 4 options right: 0.75"
    assert partial_credit(M, ["b", "d"]) == "0 of 4 options right: 0.00"
    assert expected(N) == "4.096 GB (within ±0.05 GB)"
    assert entered(N, "4096 MB") == "4096 MB = 4.096 GB" and entered(N, "4.1 GB") == "4.1 GB"
    assert entered(N, "4.1") == "4.1"
