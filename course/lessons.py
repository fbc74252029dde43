"""Load lessons from ``lessons/`` (Markdown + YAML) and validate them.

A lesson is a folder ``lessons/NN-slug`` holding ``lesson.yaml`` (metadata),
``lesson.md`` (the explanation) and ``questions.yaml``; the format is in
``lessons/SCHEMA.md``. Any problem raises :class:`LessonError` naming the file
and the field, so a malformed lesson fails a test with a readable message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from course.expr import ExpressionError, evaluate

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
SECTIONS = ("Foundations", "Curvature methods", "Beyond Euclidean", "Wrap-up")
KINDS = ("single", "multiple", "numeric", "reflection")
GRADED_KINDS = ("single", "multiple", "numeric")
MIN_GRADED = 4
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_LAB_MARKER = re.compile(r"^\s*<!--\s*lab:\s*([A-Za-z0-9_-]+)\s*-->\s*$", re.MULTILINE)


class LessonError(ValueError):
    """A lesson file is malformed; the message names the file and the field."""

    def __init__(self, path: Path | str, field_name: str, problem: str):
        self.path = str(path)
        self.field = field_name
        self.problem = problem
        super().__init__(f"{self.path}: field '{field_name}': {problem}")


@dataclass(frozen=True)
class Option:
    text: str
    correct: bool
    explanation: str


@dataclass(frozen=True)
class Question:
    id: str
    kind: str
    prompt: str
    options: tuple[Option, ...] = ()
    answer: float | None = None
    answer_text: str = ""
    tolerance: float = 0.0
    unit: str = ""
    explanation: str = ""
    reference: str = ""

    @property
    def graded(self) -> bool:
        return self.kind in GRADED_KINDS


@dataclass(frozen=True)
class Source:
    id: str
    cite: str
    url: str = ""


@dataclass(frozen=True)
class Lab:
    id: str
    title: str
    description: str
    issue: int | None = None


@dataclass(frozen=True)
class Segment:
    """A piece of the lesson body: Markdown text, or the place of one lab."""

    text: str = ""
    lab: Lab | None = None


@dataclass(frozen=True)
class Lesson:
    slug: str
    order: int
    section: str
    title: str
    summary: str
    minutes: int
    objectives: tuple[str, ...]
    sources: tuple[Source, ...]
    labs: tuple[Lab, ...]
    questions: tuple[Question, ...]
    body: str
    icon: str = ""
    related: tuple[str, ...] = ()
    folder: Path = field(default=Path("."), compare=False)

    @property
    def graded_questions(self) -> tuple[Question, ...]:
        return tuple(q for q in self.questions if q.graded)

    @property
    def reflection_questions(self) -> tuple[Question, ...]:
        return tuple(q for q in self.questions if q.kind == "reflection")

    def question(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

    def segments(self) -> list[Segment]:
        """The body split at lab markers, in reading order."""
        labs = {lab.id: lab for lab in self.labs}
        out: list[Segment] = []
        pos = 0
        for m in _LAB_MARKER.finditer(self.body):
            text = self.body[pos : m.start()].strip("\n")
            if text.strip():
                out.append(Segment(text=text))
            out.append(Segment(lab=labs[m.group(1)]))
            pos = m.end()
        tail = self.body[pos:].strip("\n")
        if tail.strip():
            out.append(Segment(text=tail))
        return out


# --------------------------------------------------------------------------- helpers


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LessonError(path, "(file)", "file is missing")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LessonError(path, "(syntax)", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LessonError(path, "(top level)", "must be a mapping of fields")
    return data


def _str(data: dict, key: str, path: Path, where: str = "", required: bool = True) -> str:
    name = f"{where}{key}"
    value = data.get(key)
    if value is None:
        if required:
            raise LessonError(path, name, "is required")
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise LessonError(path, name, "must be a non-empty string")
    return value.strip()


def _ident(data: dict, key: str, path: Path, where: str = "") -> str:
    value = _str(data, key, path, where)
    if not _ID.match(value):
        raise LessonError(path, f"{where}{key}", f"{value!r} must use lowercase letters, digits and '-'")
    return value


def _list(data: dict, key: str, path: Path, required: bool = True) -> list:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise LessonError(path, key, "must be a list")
    return value


def _parse_option(raw: Any, path: Path, where: str) -> Option:
    if not isinstance(raw, dict):
        raise LessonError(path, where, "each option must be a mapping with text, correct, explanation")
    correct = raw.get("correct", False)
    if not isinstance(correct, bool):
        raise LessonError(path, f"{where}.correct", "must be true or false")
    return Option(
        text=_str(raw, "text", path, f"{where}."),
        correct=correct,
        explanation=_str(raw, "explanation", path, f"{where}."),
    )


def _parse_question(raw: Any, path: Path, index: int) -> Question:
    where = f"questions[{index}]"
    if not isinstance(raw, dict):
        raise LessonError(path, where, "must be a mapping")
    qid = _ident(raw, "id", path, f"{where}.")
    where = f"questions[{index}] ({qid})"
    kind = _str(raw, "kind", path, f"{where}.")
    if kind not in KINDS:
        raise LessonError(path, f"{where}.kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    common = dict(
        id=qid,
        kind=kind,
        prompt=_str(raw, "prompt", path, f"{where}."),
        explanation=_str(raw, "explanation", path, f"{where}.", required=False),
    )
    if kind in ("single", "multiple"):
        raw_opts = raw.get("options")
        if not isinstance(raw_opts, list) or len(raw_opts) < 2:
            raise LessonError(path, f"{where}.options", "needs a list of at least two options")
        options = tuple(_parse_option(o, path, f"{where}.options[{i}]") for i, o in enumerate(raw_opts))
        n_correct = sum(o.correct for o in options)
        if kind == "single" and n_correct != 1:
            raise LessonError(path, f"{where}.options", f"a single-choice question needs exactly one correct option, found {n_correct}")
        if kind == "multiple" and n_correct < 1:
            raise LessonError(path, f"{where}.options", "a multiple-choice question needs at least one correct option")
        if len({o.text for o in options}) != len(options):
            raise LessonError(path, f"{where}.options", "two options have the same text")
        return Question(options=options, **common)
    if kind == "numeric":
        if "answer" not in raw:
            raise LessonError(path, f"{where}.answer", "is required")
        try:
            answer = evaluate(raw["answer"])
        except ExpressionError as exc:
            raise LessonError(path, f"{where}.answer", str(exc)) from exc
        tol = raw.get("tolerance")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
            raise LessonError(path, f"{where}.tolerance", "must be a number >= 0")
        return Question(
            answer=answer,
            answer_text=str(raw["answer"]),
            tolerance=float(tol),
            unit=_str(raw, "unit", path, f"{where}.", required=False),
            **common,
        )
    return Question(reference=_str(raw, "reference", path, f"{where}."), **common)


def _icon(meta: dict, path: Path) -> str:
    icon = _str(meta, "icon", path, required=False)
    if icon and not re.fullmatch(r":material/[a-z0-9_]+:", icon):
        raise LessonError(path, "icon", f"{icon!r} must look like ':material/name:'")
    return icon


def load_lesson(folder: Path) -> Lesson:
    """Load and validate one lesson folder."""
    meta_path = folder / "lesson.yaml"
    body_path = folder / "lesson.md"
    q_path = folder / "questions.yaml"
    meta = _read_yaml(meta_path)

    slug = _ident(meta, "slug", meta_path)
    order = meta.get("order")
    if isinstance(order, bool) or not isinstance(order, int):
        raise LessonError(meta_path, "order", "must be an integer")
    section = _str(meta, "section", meta_path)
    if section not in SECTIONS:
        raise LessonError(meta_path, "section", f"{section!r} is not one of {', '.join(SECTIONS)}")
    minutes = meta.get("minutes", 15)
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
        raise LessonError(meta_path, "minutes", "must be a positive integer")

    objectives = _list(meta, "objectives", meta_path)
    if not objectives or not all(isinstance(o, str) and o.strip() for o in objectives):
        raise LessonError(meta_path, "objectives", "must be a non-empty list of strings")

    sources = []
    for i, raw in enumerate(_list(meta, "sources", meta_path)):
        if not isinstance(raw, dict):
            raise LessonError(meta_path, f"sources[{i}]", "must be a mapping with id, cite, url")
        sources.append(
            Source(
                id=_str(raw, "id", meta_path, f"sources[{i}]."),
                cite=_str(raw, "cite", meta_path, f"sources[{i}]."),
                url=_str(raw, "url", meta_path, f"sources[{i}].", required=False),
            )
        )
    if not sources:
        raise LessonError(meta_path, "sources", "a lesson must cite at least one source")

    labs = []
    for i, raw in enumerate(_list(meta, "labs", meta_path, required=False) or []):
        if not isinstance(raw, dict):
            raise LessonError(meta_path, f"labs[{i}]", "must be a mapping with id, title, description")
        issue = raw.get("issue")
        if issue is not None and (isinstance(issue, bool) or not isinstance(issue, int)):
            raise LessonError(meta_path, f"labs[{i}].issue", "must be an issue number")
        labs.append(
            Lab(
                id=_ident(raw, "id", meta_path, f"labs[{i}]."),
                title=_str(raw, "title", meta_path, f"labs[{i}]."),
                description=_str(raw, "description", meta_path, f"labs[{i}]."),
                issue=issue,
            )
        )

    related = _list(meta, "related", meta_path, required=False) or []
    if not all(isinstance(r, str) for r in related):
        raise LessonError(meta_path, "related", "must be a list of lesson slugs")

    if not body_path.is_file():
        raise LessonError(body_path, "(file)", "file is missing")
    body = body_path.read_text(encoding="utf-8")
    markers = _LAB_MARKER.findall(body)
    lab_ids = [lab.id for lab in labs]
    for lab_id in lab_ids:
        if markers.count(lab_id) != 1:
            raise LessonError(body_path, f"labs ({lab_id})", f"marker '<!-- lab: {lab_id} -->' must appear exactly once, found {markers.count(lab_id)}")
    for marker in markers:
        if marker not in lab_ids:
            raise LessonError(body_path, f"labs ({marker})", "marker names a lab that lesson.yaml does not list")

    qdata = _read_yaml(q_path)
    raw_questions = _list(qdata, "questions", q_path)
    questions = tuple(_parse_question(raw, q_path, i) for i, raw in enumerate(raw_questions))
    ids = [q.id for q in questions]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise LessonError(q_path, "questions.id", f"duplicate ids: {', '.join(dupes)}")
    n_graded = sum(q.graded for q in questions)
    if n_graded < MIN_GRADED:
        raise LessonError(q_path, "questions", f"needs at least {MIN_GRADED} graded questions, has {n_graded}")

    return Lesson(
        slug=slug,
        order=order,
        section=section,
        title=_str(meta, "title", meta_path),
        summary=_str(meta, "summary", meta_path),
        minutes=minutes,
        objectives=tuple(o.strip() for o in objectives),
        sources=tuple(sources),
        labs=tuple(labs),
        questions=questions,
        body=body,
        icon=_icon(meta, meta_path),
        related=tuple(related),
        folder=folder,
    )


def load_intro(root: Path | str = LESSONS_DIR) -> str:
    """The course introduction shown on the home page (``lessons/course.md``)."""
    path = Path(root) / "course.md"
    if not path.is_file():
        raise LessonError(path, "(file)", "file is missing")
    return path.read_text(encoding="utf-8")


def load_lessons(root: Path | str = LESSONS_DIR) -> list[Lesson]:
    """Load every lesson folder under ``root``, sorted by ``order``.

    Cross-lesson rules are checked too: unique slugs and orders, and
    ``related`` naming existing lessons.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "lesson.yaml").exists())
    lessons = [load_lesson(f) for f in folders]
    slugs = [lesson.slug for lesson in lessons]
    for lesson in lessons:
        meta = lesson.folder / "lesson.yaml"
        if slugs.count(lesson.slug) > 1:
            raise LessonError(meta, "slug", f"{lesson.slug!r} is used by more than one lesson")
        if [x.order for x in lessons].count(lesson.order) > 1:
            raise LessonError(meta, "order", f"{lesson.order} is used by more than one lesson")
        for rel in lesson.related:
            if rel not in slugs:
                raise LessonError(meta, "related", f"{rel!r} is not the slug of any lesson")
    return sorted(lessons, key=lambda x: x.order)
