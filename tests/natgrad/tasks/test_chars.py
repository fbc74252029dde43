"""natgrad.tasks.chars: the lesson text as data, the vocabulary, the causal transformer,
sampling, and the task in the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from natgrad.experiments import TASKS, Spec, make_task, run
from natgrad.tasks.chars import (
    CONTEXT,
    OTHER,
    VOCAB,
    char_transformer,
    chars_task,
    decode,
    encode,
    generate,
    lesson_text,
    sample_text,
    windows,
)
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny forward passes: one thread avoids contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_text_is_every_lesson_read_from_disk(tmp_path):
    files = sorted((ROOT / "lessons").glob("*/lesson.md"))
    assert len(files) >= 9
    assert lesson_text() == "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    (tmp_path / "01-a").mkdir()
    (tmp_path / "01-a" / "lesson.md").write_text("abc")
    (tmp_path / "02-b").mkdir()
    (tmp_path / "02-b" / "lesson.md").write_text("é!")
    assert lesson_text(str(tmp_path)) == "abc\n\né!"
    with pytest.raises(FileNotFoundError):
        lesson_text(str(tmp_path / "none"))


def test_vocabulary_round_trip_and_unknown_characters():
    assert len(VOCAB) == 97 and VOCAB[0] == "\n" and VOCAB[1] == " " and VOCAB[95] == "~"
    text = "Fisher: $F^{-1} g$\n"
    assert decode(encode(text)) == text
    assert encode("é≈").tolist() == [OTHER, OTHER] and decode([OTHER]) == "\ufffd"


def test_windows_are_shifted_by_one_character():
    X, Y = windows("abcdefghij", 3)  # 10 characters: 3 windows of 3 + 1
    assert X.shape == Y.shape == (3, 3)
    assert decode(X[1]) == "def" and decode(Y[1]) == "efg"
    assert torch.equal(X[:, 1:], Y[:, :-1])
    with pytest.raises(ValueError):
        windows("ab", 3)


def test_attention_is_causal_and_the_initial_loss_is_log_vocabulary():
    """Changing the last character changes no earlier position's logits; at GPT-2's small
    initialisation the predictions are nearly uniform, so the loss is close to ln 97."""
    model = char_transformer(seed=0).double()
    x = encode("natural gradient descent, step by step!").reshape(1, -1)[:, :CONTEXT]
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=0)
    assert not torch.equal(a[:, -1], b[:, -1])
    task = chars_task(seed=0)
    with torch.no_grad():
        loss = float(task.loss(task.inputs[:64], task.targets[:64]))
    assert loss == pytest.approx(math.log(97), abs=0.02)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, CONTEXT + 1, dtype=torch.int64))


def test_generation_is_repeatable_and_greedy_is_the_argmax():
    model = char_transformer(seed=1)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, b = generate(model, "The ", 50, generator=g(3)), generate(model, "The ", 50, generator=g(3))
    assert a == b and a.startswith("The ") and len(a) == 54
    greedy = generate(model, "ab", 1, temperature=0)
    with torch.no_grad():
        expected = VOCAB[int(model(encode("ab").reshape(1, -1))[0, -1].argmax())]
    assert greedy == "ab" + expected
    assert sample_text(model.state_dict(), "The ", 50, temperature=1.0, seed=3) == a


def test_task_in_the_registry_trains():
    assert "lesson-chars" in TASKS
    traj = run(Spec.make({"lr": 3e-3}, task="lesson-chars", optimizer="adam", steps=30, batch_size=8,
                         eval_every=30, keep_model=True))
    assert traj.status == "ok" and traj.eval_loss[-1] < traj.eval_loss[0]
    model = char_transformer()
    model.load_state_dict(traj.model_state)  # the kept state is a full state_dict of the model
    assert all(v.device.type == "cpu" for v in traj.model_state.values())


def test_lessons_dir_is_the_repository_s():
    from natgrad.tasks import chars

    assert chars.LESSONS_DIR == Path(ROOT) / "lessons"


@pytest.mark.parametrize("options", [{"context": 0}, {"heads": 0}, {"width": 30, "heads": 4}, {"layers": 1.5}])
def test_shapes_no_transformer_can_take_are_refused_by_name(options):
    # (context 0 was a ZeroDivisionError)
    with pytest.raises(ValueError, match=next(iter(options)) if "heads" not in options or "width" not in options
                       else "multiple of heads"):
        make_task("lesson-chars", 0, torch.device("cpu"), torch.float32, options)
