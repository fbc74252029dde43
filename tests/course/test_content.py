"""What the lessons teach and how they say it: citations resolve, corrected facts stay
corrected, one notation, a Takeaways section per lesson. Text checks only (fast)."""

from __future__ import annotations

import re
import shutil
import unicodedata

import pytest
import yaml

from course.bibliography import BIBLIOGRAPHY, load_bibliography
from course.lessons import LESSONS_DIR, LessonError, load_intro, load_lesson, load_lessons, load_notation

LESSONS = load_lessons()


def _question_texts(q) -> list[str]:
    parts = [q.prompt, q.explanation, q.reference]
    for o in q.options:
        parts += [o.text, o.explanation]
    return [p for p in parts if p]


def _texts(lesson) -> list[str]:
    """Everything a learner reads in one lesson, in pieces."""
    parts = [lesson.title, lesson.summary, lesson.body, *lesson.objectives]
    parts += [f"{lab.title} {lab.description}" for lab in lesson.labs]
    for q in lesson.questions:
        parts += _question_texts(q)
    return parts


ALL_TEXT = [(x.slug, t) for x in LESSONS for t in _texts(x)] + [
    ("course.md", load_intro()), ("notation.md", load_notation())]


# ------------------------------------------------------------------ sources

def test_every_listed_source_is_in_the_bibliography():
    bib = load_bibliography()
    assert len(bib) >= 40
    for folder in sorted(p for p in LESSONS_DIR.iterdir() if (p / "lesson.yaml").is_file()):
        raw = yaml.safe_load((folder / "lesson.yaml").read_text(encoding="utf-8"))["sources"]
        for entry in raw:
            assert isinstance(entry, str), f"{folder.name}: cite {entry!r} by its bibliography id"
            assert entry in bib, f"{folder.name}: {entry!r} is not in {BIBLIOGRAPHY.name}"
    for lesson in LESSONS:
        for source in lesson.sources:
            assert source == bib[source.id]


def test_a_work_is_written_down_once():
    """No work sits in the bibliography under two ids: arXiv numbers and addresses are unique."""
    bib = load_bibliography().values()
    arxiv = [a for s in bib for a in set(re.findall(r"arXiv[: ]?(\d{4}\.\d{4,5})", s.cite))]
    urls = [s.url.rstrip("/").lower() for s in bib if s.url]
    for keys in (arxiv, urls):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        assert not dupes, dupes


_NAME = r"[A-Z][a-zA-Zéè\-]+"
_CITATION = re.compile(rf"\b({_NAME})((?:(?:, | & | and ){_NAME})*)(?: et al\.)?,? \(?(?:[A-Z][A-Za-z]+ )?(\d{{4}})\b")
_NOT_AUTHORS = {"the", "icml", "iclr", "algoperf", "k-fac", "neurips", "sc", "jmlr", "in", "since", "from", "until"}


def _ascii(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()


def citations(text: str) -> set[str]:
    """Bibliography ids of the works a text cites as 'Name (2015)', 'Name et al., 2015',
    'Name & Other (ICLR 2015)' ..."""
    out = set()
    for m in _CITATION.finditer(text):
        name = _ascii(m.group(1))
        if name not in _NOT_AUTHORS:
            out.add(f"{name}{m.group(3)}")
    return out


def test_citation_reader():
    text = ("Martens & Grosse (2015) and (Kunstner et al., 2019); Ba, Grosse & Martens (ICLR 2017); "
            "Bécigneul & Ganea, 2019; The 2018 analysis; AlgoPerf 2024.")
    assert citations(text) == {"martens2015", "kunstner2019", "ba2017", "becigneul2019"}


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda x: x.slug)
def test_every_cited_work_is_in_the_lessons_sources(lesson):
    cited = set().union(*(citations(t) for t in _texts(lesson)))
    missing = cited - {s.id for s in lesson.sources}
    assert not missing, f"{lesson.slug} cites works its sources do not list: {sorted(missing)}"


def test_required_sources():
    by_slug = {x.slug: {s.id for s in x.sources} for x in LESSONS}
    assert "bonnabel2013" in by_slug["riemannian"]
    assert "kunstner2019" in by_slug["kfac"]


@pytest.fixture
def copy(tmp_path):
    root = tmp_path / "lessons"
    shutil.copytree(LESSONS_DIR, root)
    return root


def _set_sources(path, sources):
    data = yaml.safe_load(path.read_text())
    data["sources"] = sources
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


def test_an_unknown_source_id_names_lesson_and_entry(copy):
    _set_sources(copy / "02-kfac" / "lesson.yaml", ["martens2015", "nobody2099"])
    with pytest.raises(LessonError) as info:
        load_lessons(copy)
    assert "02-kfac/lesson.yaml" in info.value.path and info.value.field == "sources[1]"
    assert "nobody2099" in str(info.value)


def test_a_copied_bibliography_entry_is_refused(copy):
    _set_sources(copy / "02-kfac" / "lesson.yaml", [{"id": "martens2015", "cite": "J. Martens. Copied.", "url": ""}])
    with pytest.raises(LessonError, match="list its id instead"):
        load_lessons(copy)


def test_a_source_only_one_lesson_cites_may_stay_inline(copy):
    _set_sources(copy / "02-kfac" / "lesson.yaml",
                 ["martens2015", "grosse2016", "ba2017", "osawa2019", "pauloski2020", "pauloski2021", "kunstner2019",
                  {"id": "local2020", "cite": "A. Local. Only here. 2020."}])
    kfac = next(x for x in load_lessons(copy) if x.slug == "kfac")
    assert kfac.sources[-1].cite == "A. Local. Only here. 2020."


def test_a_lesson_folder_copied_alone_uses_the_course_bibliography(tmp_path):
    src = LESSONS_DIR / "07-riemannian"
    shutil.copytree(src, tmp_path / src.name)
    alone = load_lesson(tmp_path / src.name)
    assert alone.sources == next(x for x in LESSONS if x.slug == "riemannian").sources


def test_a_malformed_bibliography_names_the_entry(copy):
    (copy / "bibliography.yaml").write_text("martens2015:\n  url: https://example.org\n")
    with pytest.raises(LessonError) as info:
        load_lessons(copy)
    assert "bibliography.yaml" in info.value.path and info.value.field == "martens2015.cite"


# ------------------------------------------------------------------ corrected facts

def test_no_internal_notes_are_cited():
    for where, text in ALL_TEXT:
        for needle in ("facts row", "facts rows", "facts.md", "fact sheet", "research/", "HELPERS"):
            assert needle.lower() not in text.lower(), f"{where}: a learner cannot see {needle!r}"


def test_sophia_range_is_the_iclr_version():
    for where, text in ALL_TEXT:
        assert not re.search(r"125M\s*(?:-|–|to)\s*770M", text), f"{where}: Sophia's ICLR 2024 range goes to 1.5B"


def test_kaisa_is_not_a_resnet_figure_against_sgd():
    """KAISA's 18.1-36.3% spans ResNet-50, Mask R-CNN, U-Net and BERT-Large against their
    original optimizers (Pauloski et al., SC21); wherever it is stated as true, say so."""
    stated = 0
    for lesson in LESSONS:
        for para in re.split(r"\n\s*\n", lesson.body):
            if "18.1-36.3" in para:
                stated += 1
                assert "original optimizer" in para, f"{lesson.slug}: {para[:120]}"
        for q in lesson.questions:
            texts = [q.prompt, q.explanation, q.reference] + [
                o.text + " " + o.explanation for o in q.options if o.correct]
            for text in texts:
                if "18.1-36.3" in text:
                    stated += 1
                    assert "original" in text, f"{lesson.slug}/{q.id}: {text[:120]}"
            for o in q.options:
                if "18.1-36.3" in o.text and "SGD" in o.text and "ResNet" in o.text:
                    assert not o.correct, f"{lesson.slug}/{q.id}: KAISA's range is not ResNet-50 against SGD"
    assert stated >= 3


def test_the_reparametrisation_is_taught():
    adam = LESSONS[0]
    assert "w = 1000" in adam.body and "10^6" in adam.body
    assert "exactly the same function" not in adam.body
    q = adam.question("reparametrise-step")
    assert q.answer == pytest.approx(1e6)


def test_the_exponent_question_does_not_claim_it_was_untuned_because_minus_half_works():
    shampoo = next(x for x in LESSONS if x.slug == "shampoo")
    for text in _question_texts(shampoo.question("why-quarter")):
        assert "shows the exponent was not tuned" not in text


# ------------------------------------------------------------------ one notation

RETIRED = {
    r"\\nabla h\b|\bh\(\\theta": "the loss is \\mathcal{L} (h is Sophia's curvature estimate)",
    r"\\nabla L\b|\\nabla f\b": "the loss is \\mathcal{L}",
    r"\\otimes G\b|\bG\^\{-1\}": "K-FAC's output factor is \\Gamma; G is a gradient matrix",
    r"\\lambda_x|\\lambda_\{x|\\lambda_[0-9i]\b": "\\lambda is damping only (conformal factor \\psi_x, eigenvalues \\sigma_i)",
    r"L\^\{[-0-9/]+\} \\otimes R|\bL \\otimes R\b|L ⊗ R": "with column stacking Shampoo's preconditioner is R \\otimes L",
    r"row by row|row-wise stacking": "vec stacks columns",
    r"\\delta\s*\\delta\^\\top|\\lVert \\delta \\rVert\^2": "the back-propagated gradient is e; \\delta is a step",
    r"\bG\(x\)": "the metric matrix is \\Omega(x)",
    r"\\Gamma_\{x": "vector transport is \\mathcal{T}",
}


def test_retired_symbols_are_gone():
    for where, text in ALL_TEXT:
        if where == "notation.md":
            continue
        for pattern, why in RETIRED.items():
            m = re.search(pattern, text)
            assert m is None, f"{where}: {m.group(0)!r}: {why}"


def test_rho_is_only_the_reduction_ratio():
    sophia = next(x for x in LESSONS if x.slug == "sophia")
    for text in _texts(sophia):
        for m in re.finditer(r"\\rho\b", text):
            assert "reduction ratio" in text[max(0, m.start() - 80):m.end() + 80], text[m.start() - 80:m.end() + 80]
    for where, text in ALL_TEXT:
        assert not re.search(r"\\rho\s*h\b|\\rho\\,\s*h", text), f"{where}: Sophia's scale is \\gamma"


def test_bytes_in_si_with_binary_in_brackets():
    for where, text in ALL_TEXT:
        for m in re.finditer(r"\d[\d.,]*\s*(KiB|MiB|GiB|TiB|PiB)", text):
            before = text[max(0, m.start() - 40):m.start()]
            assert "(" in before and re.search(r"\d[\d.,]*\**\s*(kB|MB|GB|TB|PB)", before), (
                f"{where}: {text[max(0, m.start() - 40):m.end()]!r}: give the SI figure first, the binary one in brackets")


def test_the_notation_page_defines_the_conventions():
    page = load_notation()
    for symbol in (r"\mathcal{L}", r"\Gamma = \mathbb{E}[e e^\top]", r"\lambda", r"\rho", r"\gamma", r"\psi_x",
                   r"R^{-1/4} \otimes L^{-1/4}", r"\operatorname{vec}", "MiB"):
        assert symbol in page, symbol


# ------------------------------------------------------------------ structure

@pytest.mark.parametrize("lesson", LESSONS, ids=lambda x: x.slug)
def test_every_lesson_ends_with_takeaways(lesson):
    heads = re.findall(r"^## (.+)$", lesson.body, re.MULTILINE)
    assert "Takeaways" in heads, f"{lesson.slug} has no '## Takeaways' section"
    section = lesson.body.split("## Takeaways", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^- ", section, re.MULTILINE)) >= 3, f"{lesson.slug}: Takeaways needs a few bullets"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda x: x.slug)
def test_a_lab_below_is_there(lesson):
    body = lesson.body
    for m in re.finditer(r"(?i)lab below", body):
        rest = body[m.end():]
        marker = re.search(r"<!--\s*lab:", rest)
        heading = re.search(r"^#{2,3} ", rest, re.MULTILINE)
        assert marker and (heading is None or marker.start() < heading.start()), (
            f"{lesson.slug}: 'lab below' with no lab before the next heading: {body[m.start() - 60:m.end() + 40]!r}")
    assert "will be able to" not in body, f"{lesson.slug}: the labs exist; say what the learner can do"
