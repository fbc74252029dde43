"""Load lessons from ``lessons/`` (Markdown + YAML) and validate them.

A lesson is a folder ``lessons/NN-slug`` holding ``lesson.yaml`` (metadata),
``lesson.md`` (the explanation) and ``questions.yaml``; the format is in
``lessons/SCHEMA.md``. Any problem raises :class:`LessonError` naming the file
and the field, so a malformed lesson fails a test with a readable message.
"""

from __future__ import annotations

import hashlib
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


def option_id(text: str) -> str:
    """The id of an option that has none in its file: a slug of its first words and
    a hash of its whole text. Reordering options keeps it; editing the text changes it
    (a saved answer naming the old text then shows as stale instead of silently
    pointing at the edited option)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = "-".join(words)[:24].strip("-") or "option"
    return f"{slug}-{hashlib.sha1(text.strip().encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Option:
    text: str
    correct: bool
    explanation: str
    id: str = ""  # stable across reordering; saved answers name options by it (default: option_id(text))

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", option_id(self.text))


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
class Prediction:
    """The question a lab asks before its first run ("Predict, then run"): not graded, the run answers it."""

    prompt: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Lab:
    id: str
    title: str
    description: str
    issue: int | None = None
    lesson: str = ""  # the slug of the lesson that lists it
    predict: Prediction | None = None
    captions: tuple[tuple[str, str], ...] = ()  # (figure key, what to look for in it)

    def caption(self, key: str) -> str:
        """What to look for in the figure drawn under ``key`` ("" when the lesson says nothing)."""
        return dict(self.captions).get(key, "")

    @property
    def prediction_id(self) -> str:
        """The question id under which the learner's prediction is saved with their answers."""
        return f"predict-{self.id}"


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
    nav_title: str = ""  # the short title in the navigation (the page heading keeps ``title``)
    related: tuple[str, ...] = ()
    folder: Path = field(default=Path("."), compare=False)

    @property
    def short_title(self) -> str:
        """The title in the navigation: ``nav_title``, or the full title when there is none."""
        return self.nav_title or self.title

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
    oid = _ident(raw, "id", path, f"{where}.") if raw.get("id") is not None else ""
    return Option(
        text=_str(raw, "text", path, f"{where}."),
        correct=correct,
        explanation=_str(raw, "explanation", path, f"{where}."),
        id=oid,
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
        ids = [o.id for o in options]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise LessonError(path, f"{where}.options", f"two options have the same id: {', '.join(dupes)}")
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


def _sources(meta: dict, meta_path: Path, bibliography: dict[str, Source] | Path) -> tuple[Source, ...]:
    """A lesson's ``sources``: ids of the shared bibliography, or (for a work no other
    lesson cites) a mapping with id, cite and url."""
    if isinstance(bibliography, Path):
        from course.bibliography import load_bibliography  # course.bibliography imports this module

        bibliography = load_bibliography(bibliography)
    sources: list[Source] = []
    for i, raw in enumerate(_list(meta, "sources", meta_path)):
        where = f"sources[{i}]"
        if isinstance(raw, str):
            if raw not in bibliography:
                raise LessonError(meta_path, where, f"{raw!r} is not an id in lessons/bibliography.yaml")
            sources.append(bibliography[raw])
            continue
        if not isinstance(raw, dict):
            raise LessonError(meta_path, where, "must be a bibliography id or a mapping with id, cite, url")
        sid = _str(raw, "id", meta_path, f"{where}.")
        if sid in bibliography:
            raise LessonError(meta_path, where, f"{sid!r} is in lessons/bibliography.yaml: list its id instead of copying it")
        sources.append(Source(id=sid, cite=_str(raw, "cite", meta_path, f"{where}."),
                              url=_str(raw, "url", meta_path, f"{where}.", required=False)))
    if not sources:
        raise LessonError(meta_path, "sources", "a lesson must cite at least one source")
    ids = [x.id for x in sources]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise LessonError(meta_path, "sources", f"listed twice: {', '.join(dupes)}")
    return tuple(sources)


NAV_TITLE_MAX = 26  # characters that fit the sidebar navigation uncut at its default width


def _nav_title(meta: dict, path: Path) -> str:
    title = _str(meta, "nav_title", path, required=False)
    if len(title) > NAV_TITLE_MAX:
        raise LessonError(path, "nav_title", f"{title!r} has {len(title)} characters; the navigation shows "
                                             f"{NAV_TITLE_MAX} uncut")
    return title

MAX_CAPTION = 320  # "one or two lines" under a figure
_FIGURE_KEY = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _parse_captions(raw: Any, path: Path, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise LessonError(path, where, "must be a mapping from a figure key to what to look for in that figure")
    out = []
    for key, text in raw.items():
        if not isinstance(key, str) or not _FIGURE_KEY.match(key):
            raise LessonError(path, f"{where}.{key}", "a figure key uses lowercase letters, digits and '-'")
        if not isinstance(text, str) or not text.strip():
            raise LessonError(path, f"{where}.{key}", "must be a non-empty string")
        if len(text.strip()) > MAX_CAPTION:
            raise LessonError(path, f"{where}.{key}", f"has {len(text.strip())} characters; a caption is one or two "
                                                      f"lines (at most {MAX_CAPTION})")
        out.append((key, " ".join(text.split())))
    return tuple(out)


def _parse_prediction(raw: Any, path: Path, where: str) -> Prediction | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise LessonError(path, where, "must be a mapping with prompt and options")
    prompt = _str(raw, "prompt", path, f"{where}.")
    raw_opts = raw.get("options")
    if not isinstance(raw_opts, list) or not 2 <= len(raw_opts) <= 6:
        raise LessonError(path, f"{where}.options", "needs a list of 2 to 6 options")
    options = []
    for i, o in enumerate(raw_opts):
        at = f"{where}.options[{i}]"
        if isinstance(o, str) and o.strip():
            options.append(Option(text=o.strip(), correct=False, explanation=""))
        elif isinstance(o, dict):
            oid = _ident(o, "id", path, f"{at}.") if o.get("id") is not None else ""
            options.append(Option(text=_str(o, "text", path, f"{at}."), correct=False, explanation="", id=oid))
        else:
            raise LessonError(path, at, "an option is a non-empty string, or a mapping with text (and id)")
    if len({o.text for o in options}) != len(options) or len({o.id for o in options}) != len(options):
        raise LessonError(path, f"{where}.options", "two options have the same text or id")
    return Prediction(prompt=prompt, options=tuple(options))


def _icon(meta: dict, path: Path) -> str:
    icon = _str(meta, "icon", path, required=False)
    if icon and not re.fullmatch(r":material/[a-z0-9_]+:", icon):
        raise LessonError(path, "icon", f"{icon!r} must look like ':material/name:'")
    return icon


def load_lesson(folder: Path, bibliography: dict[str, Source] | None = None) -> Lesson:
    """Load and validate one lesson folder. Its sources are resolved in ``bibliography``
    (by default the ``bibliography.yaml`` next to the folder, or the course's when the folder
    stands alone; see :mod:`course.bibliography`)."""
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

    if bibliography is None:
        # the bibliography next to the lesson folders; a folder copied alone uses the course's
        bibliography = folder.parent / "bibliography.yaml"
        if not bibliography.is_file():
            bibliography = LESSONS_DIR / "bibliography.yaml"
    sources = _sources(meta, meta_path, bibliography)

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
                lesson=slug,
                predict=_parse_prediction(raw.get("predict"), meta_path, f"labs[{i}].predict"),
                captions=_parse_captions(raw.get("captions"), meta_path, f"labs[{i}].captions"),
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
        sources=sources,
        labs=tuple(labs),
        questions=questions,
        body=body,
        icon=_icon(meta, meta_path),
        related=tuple(related),
        nav_title=_nav_title(meta, meta_path),
        folder=folder,
    )


def load_intro(root: Path | str = LESSONS_DIR) -> str:
    """The course introduction shown on the home page (``lessons/course.md``)."""
    path = Path(root) / "course.md"
    if not path.is_file():
        raise LessonError(path, "(file)", "file is missing")
    return path.read_text(encoding="utf-8")


def load_notation(root: Path | str = LESSONS_DIR) -> str:
    """The course's notation, one meaning per symbol (``lessons/notation.md``), shown on
    the Notation page and followed by every lesson."""
    path = Path(root) / "notation.md"
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
