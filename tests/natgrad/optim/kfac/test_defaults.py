"""``KFAC(model)`` with nothing else trains small MLPs and convnets, on classification
(integer targets: softmax) and regression (floating targets: Gaussian).

Oracles: the loss at the start of training, and the loss the whole run has seen so far
(a rise of more than 10x over its running minimum is what the unguarded rule did on a
saturated softmax: 1e-8 -> 1e2 and beyond). The figures in the comments were measured on
this repository's CPU with torch 2.13.
"""

import math

import torch
from torch.nn import functional as F

from natgrad.optim import KFAC
from natgrad.tasks.digits import (
    CNN_BATCH,
    digits_autoencoder,
    digits_classifier,
    digits_cnn,
    load_digits_tensors,
)


def _whole(model, X, y, loss):
    with torch.no_grad():
        return float(loss(model(X), y))


def test_defaults_train_a_softmax_mlp_2000_full_batch_steps_without_a_10x_rise():
    X, y = load_digits_tensors()
    model = digits_classifier(seed=0)
    opt = KFAC(model)
    losses = [opt.step(X, y) for _ in range(2000)]
    assert opt.likelihood == "softmax"
    assert all(math.isfinite(v) for v in losses)
    running_min = [min(losses[: k + 1]) for k in range(len(losses))]
    assert max(v / m for v, m in zip(losses, running_min, strict=True)) <= 10
    assert losses[-1] < 1e-5 * losses[0]  # measured: 2.33 -> 5.7e-8 (the float32 floor of the loss)


def test_defaults_train_an_mlp_regression():
    X, _ = load_digits_tensors()
    model = digits_autoencoder(seed=0)
    opt = KFAC(model)
    losses = [opt.step(X, X) for _ in range(100)]
    assert opt.likelihood == "gaussian"
    assert losses[-1] < 0.15 * losses[0]  # measured: 9.1 -> 0.52


def _minibatches(X, y, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (CNN_BATCH,), generator=g)
        yield X[idx], y[idx]


def test_defaults_train_a_cnn_classifier_300_steps_below_its_starting_loss():
    X, y = load_digits_tensors()
    model = digits_cnn(seed=0)
    start = _whole(model, X, y, F.cross_entropy)
    opt = KFAC(model)
    for x, t in _minibatches(X, y, 300):
        opt.step(x, t)
    end = _whole(model, X, y, F.cross_entropy)
    assert end < start and end < 1e-2 * start  # measured: 2.31 -> 6e-5
    assert not opt.event_counts.get("eigh_failed") and opt.steps == 300


def test_defaults_train_a_cnn_regression():
    X, _ = load_digits_tensors()
    R = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) / 8
    Y = X @ R  # ten linear read-outs of the image
    model = digits_cnn(seed=0)
    mse = lambda out, target: 0.5 * ((out - target) ** 2).sum(1).mean()  # noqa: E731
    start = _whole(model, X, Y, mse)
    opt = KFAC(model)
    for x, t in _minibatches(X, Y, 100):
        opt.step(x, t)
    assert opt.likelihood == "gaussian"
    assert _whole(model, X, Y, mse) < 0.01 * start  # measured: 1.50 -> 6.3e-4
