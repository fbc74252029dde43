"""experiments.run against a hand-written training loop; divergence and stop."""

import math
from unittest import mock

import pytest
import torch

from natgrad.experiments import Spec, run
from natgrad.race import applicable
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors


def test_spec_is_hashable_and_order_independent():
    a = Spec.make({"lr": 1e-3, "beta1": 0.9}, optimizer="adam")
    b = Spec.make({"beta1": 0.9, "lr": 1e-3}, optimizer="adam")
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1


def test_adam_run_equals_manual_loop():
    traj = run(Spec.make({"lr": 3e-3}, optimizer="adam", steps=15))
    X, _ = load_digits_tensors()
    model = digits_autoencoder(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = autoencoder_loss(model(X), X)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert traj.loss == losses
    assert traj.status == "ok" and traj.step == list(range(15))
    assert all(b >= a for a, b in zip(traj.seconds, traj.seconds[1:], strict=False))


def test_divergence_stops_with_words():
    traj = run(Spec.make({"lr": 10.0, "momentum": 0.9}, optimizer="sgd", steps=200))
    assert traj.status == "diverged"
    assert len(traj.loss) < 200
    assert "Diverged at step" in traj.message and "learning rate" in traj.message
    assert not math.isfinite(traj.loss[-1]) or traj.loss[-1] > 1e3 * traj.loss[0]


def test_stop_request_and_progress():
    seen = []
    traj = run(Spec.make({"lr": 1e-3}, optimizer="adam", steps=100), progress=lambda d, t: seen.append(d),
               should_stop=lambda: len(seen) >= 3)
    assert traj.status == "stopped" and len(traj.loss) == 6 and seen == [2, 4, 6]


def test_unknown_optimizer_is_an_error_not_a_crash():
    traj = run(Spec.make({}, optimizer="nope", steps=3))
    assert traj.status == "error" and "nope" in traj.message


def test_an_optimizer_that_does_not_fit_the_task_is_an_error_not_a_crash():
    """K-FAC's softmax likelihood takes (N, C) logits; the character transformer gives (N, T, C): K-FAC is not
    built for it (so the race leaves it out), and an optimizer that refuses a task's outputs only at its first
    step ends the run with the reason, without advice about learning rates that cannot help."""
    traj = run(Spec.make({}, {}, task="lesson-chars", optimizer="kfac", steps=3))
    assert traj.status == "error" and not traj.loss
    assert "Could not build kfac" in traj.message and "(N, C) logits" in traj.message
    assert "(N, C) logits" in applicable("lesson-chars")["kfac"]

    def refuse(self, x, y):
        raise ValueError("outputs of the wrong shape")

    with mock.patch("natgrad.experiments.TorchStepper.step", refuse):
        traj = run(Spec.make({"lr": 1e-3}, optimizer="adam", steps=3))
    assert traj.status == "error" and traj.message == "adam cannot train 'digits-autoencoder': outputs of the wrong shape"


def test_steps_and_seconds_to_target():
    traj = run(Spec.make({"lr": 3e-3}, optimizer="adam", steps=30))
    target = traj.loss[10]
    assert traj.steps_to(target) <= 10
    assert traj.seconds_to(target) == traj.seconds[traj.steps_to(target)]
    assert traj.steps_to(-1.0) is None


def test_whole_data_evaluations_do_not_change_training_and_drive_steps_to():
    spec = Spec.make({"lr": 3e-3}, task="digits-cnn", optimizer="adam", steps=12, batch_size=64)
    plain = run(spec)
    evaluated = run(Spec.make({"lr": 3e-3}, task="digits-cnn", optimizer="adam", steps=12, batch_size=64,
                              eval_every=5))
    assert evaluated.loss == plain.loss and not plain.eval_step
    assert evaluated.eval_step == [0, 5, 10, 12]
    from natgrad.tasks.digits import cnn_task

    task = cnn_task(seed=0)
    with torch.no_grad():
        assert evaluated.eval_loss[0] == float(task.loss(task.inputs, task.targets))
    target = evaluated.eval_loss[2]
    assert evaluated.steps_to(target) == 10 and evaluated.seconds_to(target) == evaluated.eval_seconds[2]


@pytest.mark.parametrize("field, value", [("steps", 0), ("steps", 2.5), ("batch_size", 0), ("batch_size", -1),
                                          ("eval_every", -1), ("threads", 0), ("dtype", "float23"),
                                          ("dtype", "int64"), ("device", "gpu0")])
def test_a_spec_no_run_can_follow_is_refused_at_once_naming_the_field(field, value):
    # (batch_size=-1 was a RuntimeError from the task, 0 a "diverged" run with learning-rate advice, eval_every=-1
    # evaluated every step, and a bad dtype or device escaped as AttributeError / RuntimeError)
    with pytest.raises(ValueError, match=field):
        run(Spec(**({"task": "digits-classifier", "optimizer": "adam", "steps": 2} | {field: value})))


def test_whole_numbers_of_any_integer_type_are_taken():
    import numpy as np

    t = run(Spec(task="digits-classifier", optimizer="adam", steps=np.int64(3), batch_size=np.int32(8)))
    assert t.status == "ok" and t.step == [0, 1, 2]
