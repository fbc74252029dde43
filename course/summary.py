"""Turn stored attempts into per-lesson and overall progress."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from course.lessons import Lesson
from course.progress import Attempt
from course.quiz import question_state


@dataclass(frozen=True)
class LessonProgress:
    slug: str
    graded_total: int
    graded_answered: int
    graded_correct: int
    reflections_total: int
    reflections_done: int
    graded_revealed: int = 0  # questions whose answer the learner saw (course.quiz)

    @property
    def done(self) -> int:
        """Questions the learner finished: right on their own, worked through to the shown answer, or written."""
        return self.graded_correct + self.graded_revealed + self.reflections_done

    @property
    def total(self) -> int:
        return self.graded_total + self.reflections_total

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def text(self) -> str:
        """'2 of 6 graded questions correct, 1 answer shown · 1 of 2 reflections written'."""
        shown = f", {self.graded_revealed} answer{'s' if self.graded_revealed != 1 else ''} shown" \
            if self.graded_revealed else ""
        return (f"{self.graded_correct} of {self.graded_total} graded questions correct{shown} · "
                f"{self.reflections_done} of {self.reflections_total} reflections written")


def lesson_progress(lesson: Lesson,
                    history: Mapping[tuple[str, str], Sequence[Attempt] | Attempt]) -> LessonProgress:
    """Progress of ``lesson`` from the learner's rows per (lesson, question) (``ProgressStore.history``;
    the newest answer per question, ``ProgressStore.latest``, is read as a one-row history).

    A graded question counts as correct when its latest answer, graded against the
    question as it is now, is right and was given before the answer was shown; as
    revealed when the learner saw the answer (course.quiz). A stale answer (one that
    no longer fits its question) counts as not answered; a reflection counts once written."""
    states = [question_state(q, history.get((lesson.slug, q.id))) for q in lesson.graded_questions]
    reflections = [question_state(q, history.get((lesson.slug, q.id))) for q in lesson.reflection_questions]
    return LessonProgress(
        slug=lesson.slug,
        graded_total=len(states),
        graded_answered=sum(s.answer is not None for s in states),
        graded_correct=sum(s.status == "correct" for s in states),
        reflections_total=len(reflections),
        reflections_done=sum(s.status == "written" for s in reflections),
        graded_revealed=sum(s.status == "revealed" for s in states),
    )


def overall(progresses: list[LessonProgress]) -> float:
    total = sum(p.total for p in progresses)
    return sum(p.done for p in progresses) / total if total else 0.0
