"""The course's one bibliography, ``lessons/bibliography.yaml``.

Every cited work is written down once, under an id made of its first author's
surname and its year (``martens2015``); a lesson's ``lesson.yaml`` lists the ids
it cites, and :func:`course.lessons.load_lesson` resolves them here. A problem
raises :class:`course.lessons.LessonError` naming the file and the entry.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from course.lessons import LESSONS_DIR, LessonError, Source

BIBLIOGRAPHY = LESSONS_DIR / "bibliography.yaml"
SOURCE_ID = re.compile(r"^[a-z][a-z0-9-]*[0-9]{4}[a-z]?$")  # surname + year, e.g. martens2015, li2020b

_cache: dict[tuple[str, float], dict[str, Source]] = {}


def load_bibliography(path: Path | str = BIBLIOGRAPHY) -> dict[str, Source]:
    """Every work of the bibliography by id. A missing file is an empty bibliography."""
    path = Path(path)
    if not path.is_file():
        return {}
    key = (str(path), path.stat().st_mtime)
    if key not in _cache:
        _cache.clear()
        _cache[key] = _parse(path)
    return dict(_cache[key])


def _parse(path: Path) -> dict[str, Source]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LessonError(path, "(syntax)", f"not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LessonError(path, "(top level)", "must map source ids to {cite, url}")
    out: dict[str, Source] = {}
    for sid, entry in data.items():
        if not isinstance(sid, str) or not SOURCE_ID.match(sid):
            raise LessonError(path, str(sid), "an id is the first author's surname and the year, e.g. martens2015")
        if not isinstance(entry, dict) or not isinstance(entry.get("cite"), str) or not entry["cite"].strip():
            raise LessonError(path, f"{sid}.cite", "must be a non-empty string")
        url = entry.get("url", "")
        if not isinstance(url, str):
            raise LessonError(path, f"{sid}.url", "must be a string")
        unknown = set(entry) - {"cite", "url"}
        if unknown:
            raise LessonError(path, sid, f"unknown fields: {', '.join(sorted(unknown))}")
        out[sid] = Source(id=sid, cite=entry["cite"].strip(), url=url.strip())
    return out
