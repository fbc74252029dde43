"""Every lesson loads; malformed lessons fail naming the file and the field."""

import shutil
from pathlib import Path

import pytest
import yaml

from course.lessons import LESSONS_DIR, MIN_GRADED, NAV_TITLE_MAX, LessonError, load_intro, load_lessons

REQUIRED_QUESTIONS = {
    "kfac": ["What is the computational advantage of K-FAC over the exact natural gradient?"],
    "shampoo": ["Why the 1/4 power rather than 1/2?"],
    "riemannian": ["Why can ordinary Adam not be used to optimize hyperbolic embeddings?"],
    "adam-diagonal-fisher": ["How does the diagonal Fisher relate to Adam's v_t?"],
    "summary": [
        "When does K-FAC's O(n^2) memory become impractical, and how does sharding help?",
        "Why does Adam often beat K-FAC in practice?",
        "What does Sophia's diagonal Hessian gain over Adam, and what does it lose against K-FAC?",
    ],
}
EXPECTED_SLUGS = ["adam-diagonal-fisher", "kfac", "damping", "shampoo", "distributed-shampoo",
                  "sophia", "riemannian", "practice", "summary"]


@pytest.fixture(scope="module")
def lessons():
    return load_lessons()


def test_the_nine_lessons_in_order(lessons):
    assert [x.slug for x in lessons] == EXPECTED_SLUGS
    assert load_intro().strip()


def test_each_lesson_is_complete(lessons):
    for lesson in lessons:
        assert len(lesson.graded_questions) >= MIN_GRADED, lesson.slug
        assert lesson.objectives and lesson.sources, lesson.slug
        assert len(lesson.body.split()) > 300, f"{lesson.slug}: explanation too short"
        assert "$" in lesson.body, f"{lesson.slug}: no maths"
        lab_segments = [s.lab.id for s in lesson.segments() if s.lab]
        assert sorted(lab_segments) == sorted(lab.id for lab in lesson.labs), lesson.slug


def test_the_original_notes_questions_are_all_asked(lessons):
    by_slug = {x.slug: x for x in lessons}
    for slug, prompts in REQUIRED_QUESTIONS.items():
        asked = [q for q in by_slug[slug].questions]
        for prompt in prompts:
            assert any(prompt in q.prompt for q in asked), f"{slug} lacks: {prompt}"
    reflections = [q.prompt for q in by_slug["summary"].reflection_questions]
    assert sum(any(p in r for r in reflections) for p in REQUIRED_QUESTIONS["summary"]) == 3


def test_question_kinds_are_all_used(lessons):
    kinds = {q.kind for x in lessons for q in x.questions}
    assert kinds == {"single", "multiple", "numeric", "reflection"}


def test_factor_memory_is_computed_not_typed(lessons):
    """A 32000 x 32000 fp32 factor is 32000^2 * 4 bytes = 4.1 GB, not 1 GB."""
    shampoo = next(x for x in lessons if x.slug == "shampoo")
    numeric = [q for q in shampoo.questions if q.kind == "numeric" and "32000" in q.prompt]
    assert numeric, "the shampoo lesson asks for the memory of a 32000x32000 factor"
    assert any(abs(q.answer - 32000**2 * 4 / 1e9) <= q.tolerance for q in numeric)


def test_navigation_titles_are_short_and_the_page_keeps_the_full_title(lessons):
    for lesson in lessons:
        assert lesson.nav_title and len(lesson.short_title) <= NAV_TITLE_MAX, lesson.slug
        assert len(lesson.nav_title) < len(lesson.title) or lesson.nav_title == lesson.title, lesson.slug
    first = lessons[0]
    assert first.short_title == first.nav_title and first.title.startswith("Adam as a diagonal")


def test_sources_are_cited_in_the_text(lessons):
    for lesson in lessons:
        for source in lesson.sources:
            assert source.cite.strip(), (lesson.slug, source.id)


# ---------------------------------------------------------------- malformed lessons

@pytest.fixture
def copy(tmp_path):
    root = tmp_path / "lessons"
    shutil.copytree(LESSONS_DIR, root)
    return root


def _edit(path: Path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def _expect(root, file_part, field_part):
    with pytest.raises(LessonError) as info:
        load_lessons(root)
    assert file_part in info.value.path, str(info.value)
    assert field_part in info.value.field, str(info.value)
    assert file_part in str(info.value) and field_part in str(info.value)


def test_yaml_syntax_error_names_file(copy):
    (copy / "02-kfac" / "questions.yaml").write_text("questions:\n  - id: [unclosed\n")
    _expect(copy, "02-kfac/questions.yaml", "(syntax)")


def test_missing_title_names_field(copy):
    _edit(copy / "04-shampoo" / "lesson.yaml", lambda d: d.pop("title"))
    _expect(copy, "04-shampoo/lesson.yaml", "title")


def test_bad_section_names_field(copy):
    _edit(copy / "03-damping" / "lesson.yaml", lambda d: d.update(section="Misc"))
    _expect(copy, "03-damping/lesson.yaml", "section")


def test_single_choice_with_two_correct_options(copy):
    def two_correct(d):
        q = next(q for q in d["questions"] if q["kind"] == "single")
        for o in q["options"][:2]:
            o["correct"] = True
    _edit(copy / "02-kfac" / "questions.yaml", two_correct)
    _expect(copy, "02-kfac/questions.yaml", "options")


def test_numeric_answer_that_is_not_arithmetic(copy):
    def bad_answer(d):
        q = next(q for q in d["questions"] if q["kind"] == "numeric")
        q["answer"] = "open('/etc/passwd')"
    _edit(copy / "04-shampoo" / "questions.yaml", bad_answer)
    _expect(copy, "04-shampoo/questions.yaml", "answer")


def test_too_few_graded_questions(copy):
    def only_reflections(d):
        d["questions"] = [q for q in d["questions"] if q["kind"] == "reflection"][:1] or d["questions"][:1]
    _edit(copy / "06-sophia" / "questions.yaml", only_reflections)
    _expect(copy, "06-sophia/questions.yaml", "questions")


def test_lab_marker_without_lab(copy):
    md = copy / "01-adam-diagonal-fisher" / "lesson.md"
    md.write_text(md.read_text() + "\n<!-- lab: ghost-lab -->\n")
    _expect(copy, "01-adam-diagonal-fisher/lesson.md", "ghost-lab")


def test_duplicate_question_ids(copy):
    _edit(copy / "07-riemannian" / "questions.yaml",
          lambda d: d["questions"][1].update(id=d["questions"][0]["id"]))
    _expect(copy, "07-riemannian/questions.yaml", "id")


def test_related_unknown_lesson(copy):
    _edit(copy / "08-practice" / "lesson.yaml", lambda d: d.update(related=["nowhere"]))
    _expect(copy, "08-practice/lesson.yaml", "related")


def test_navigation_title_too_long_names_field(copy):
    _edit(copy / "02-kfac" / "lesson.yaml", lambda d: d.update(nav_title="K-FAC: Kronecker factors of the Fisher"))
    _expect(copy, "02-kfac/lesson.yaml", "nav_title")

def _kfac_lab(d, lab_id="kfac-training"):
    return next(lab for lab in d["labs"] if lab["id"] == lab_id)


def test_lab_prediction_and_captions_are_read(copy):
    def add(d):
        _kfac_lab(d).update(predict={"prompt": "Which ends lowest?", "options": ["K-FAC", {"text": "Adam", "id": "adam"}]},
                            captions={"kt-fig-steps": "Look at   the first\n20 steps."})
    _edit(copy / "02-kfac" / "lesson.yaml", add)
    lab = next(lab for lab in next(x for x in load_lessons(copy) if x.slug == "kfac").labs if lab.id == "kfac-training")
    assert lab.lesson == "kfac" and lab.prediction_id == "predict-kfac-training"
    assert [o.text for o in lab.predict.options] == ["K-FAC", "Adam"] and lab.predict.options[1].id == "adam"
    assert lab.caption("kt-fig-steps") == "Look at the first 20 steps." and lab.caption("nothing") == ""


def test_caption_longer_than_two_lines_names_the_figure(copy):
    _edit(copy / "02-kfac" / "lesson.yaml", lambda d: _kfac_lab(d).update(captions={"kt-fig-steps": "word " * 100}))
    _expect(copy, "02-kfac/lesson.yaml", "captions.kt-fig-steps")


def test_prediction_needs_two_options(copy):
    _edit(copy / "02-kfac" / "lesson.yaml",
          lambda d: _kfac_lab(d).update(predict={"prompt": "Which?", "options": ["only one"]}))
    _expect(copy, "02-kfac/lesson.yaml", "predict.options")
