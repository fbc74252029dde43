"""Turn stored attempts into per-lesson and overall progress."""

from __future__ import annotations

from dataclasses import dataclass

from course.lessons import Lesson
from course.progress import Attempt


@dataclass(frozen=True)
class LessonProgress:
    slug: str
    graded_total: int
    graded_answered: int
    graded_correct: int
    reflections_total: int
    reflections_done: int

    @property
    def done(self) -> int:
        return self.graded_correct + self.reflections_done

    @property
    def total(self) -> int:
        return self.graded_total + self.reflections_total

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def lesson_progress(lesson: Lesson, latest: dict[tuple[str, str], Attempt]) -> LessonProgress:
    """Progress counts a graded question when its latest answer is correct and
    a reflection when an answer was submitted."""
    graded = lesson.graded_questions
    answered = [latest[(lesson.slug, q.id)] for q in graded if (lesson.slug, q.id) in latest]
    reflections = lesson.reflection_questions
    return LessonProgress(
        slug=lesson.slug,
        graded_total=len(graded),
        graded_answered=len(answered),
        graded_correct=sum(bool(a.correct) for a in answered),
        reflections_total=len(reflections),
        reflections_done=sum((lesson.slug, q.id) in latest for q in reflections),
    )


def overall(progresses: list[LessonProgress]) -> float:
    total = sum(p.total for p in progresses)
    return sum(p.done for p in progresses) / total if total else 0.0
