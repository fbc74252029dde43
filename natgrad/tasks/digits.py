"""The digits task: scikit-learn's bundled 8x8 handwritten digits.

Usage::

    from natgrad.tasks.digits import load_digits_tensors, digits_autoencoder, autoencoder_loss
    X, y = load_digits_tensors()                 # (1797, 64) in [0, 1], (1797,) int64
    model = digits_autoencoder(seed=0)           # 64-128-64-32-8-32-64-128-64, tanh
    loss = autoencoder_loss(model(X), X)         # 0.5 * sum of squares, batch mean

The data ship with scikit-learn (``sklearn.datasets.load_digits``), so nothing is
downloaded. The autoencoder follows the shape of the deep autoencoder benchmarks
of Martens & Grosse (ICML 2015, arXiv 1503.05671), scaled down to 64 inputs; its
last layer is linear, the output of a unit-variance Gaussian likelihood.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from natgrad.tasks.base import Task

AUTOENCODER_WIDTHS = (64, 128, 64, 32, 8, 32, 64, 128, 64)
CLASSIFIER_WIDTHS = (64, 32, 10)
CNN_CHANNELS = (16, 32)
CNN_BATCH = 256  # the mini-batch size the CNN task is meant for


def _digits_file() -> Path | None:
    """scikit-learn's copy of the digits (``sklearn/datasets/data/digits.csv.gz``: 64 pixel values and
    the label per row), found without importing scikit-learn (an import of about 1 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _digits_numpy() -> tuple[np.ndarray, np.ndarray]:
    path = _digits_file()
    if path is not None:  # what sklearn.datasets.load_digits reads, read the same way
        table = np.loadtxt(path, delimiter=",")
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        from sklearn.datasets import load_digits

        data = load_digits()
        pixels, labels = data.data, data.target
    X = (pixels / 16.0).astype(np.float64)  # (1797, 64), pixel values 0..16 -> [0, 1]
    y = labels.astype(np.int64)  # (1797,)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def load_digits_tensors(
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as tensors.

    Returns ``(X, y)``: ``X`` of shape (1797, 64), pixel intensities scaled to
    [0, 1] (the raw values are integers 0..16), and ``y`` of shape (1797,),
    int64 class labels 0..9. Always the same order (the file's order).
    """
    X, y = _digits_numpy()
    return (
        torch.tensor(X, dtype=dtype, device=device),
        torch.tensor(y, dtype=torch.int64, device=device),
    )


def _mlp(widths: Sequence[int], act: type[nn.Module], seed: int) -> nn.Sequential:
    if len(widths) < 2:
        raise ValueError(f"need at least an input and an output width, got {tuple(widths)}")
    layers: list[nn.Module] = []
    # Initialise from a private RNG state so the global torch RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(widths) - 2:
                layers.append(act())
    return nn.Sequential(*layers)


def digits_autoencoder(
    seed: int = 0, widths: Sequence[int] = AUTOENCODER_WIDTHS, act: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """Deep autoencoder: ``nn.Linear`` layers of the given widths, ``act()`` between
    them and no activation after the last (a Gaussian regression output).

    Train with :func:`autoencoder_loss` (target = input). Weights use PyTorch's
    default ``nn.Linear`` initialisation drawn from ``torch.manual_seed(seed)``
    in a forked RNG state, so the same seed gives the same model and the global
    RNG is not advanced.
    """
    return _mlp(widths, act, seed)


def digits_classifier(
    seed: int = 0, widths: Sequence[int] = CLASSIFIER_WIDTHS, act: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """Classifier MLP returning logits (train with cross-entropy).

    Same construction as :func:`digits_autoencoder`: ``nn.Linear`` layers,
    ``act()`` between them, none after the last, seeded initialisation.
    """
    return _mlp(widths, act, seed)


def digits_cnn(seed: int = 0, channels: Sequence[int] = CNN_CHANNELS) -> nn.Sequential:
    """A small convnet for the 8x8 digits: two 3x3 convolutions (padding 1, ReLU) and a
    linear head on the flattened feature map (``channels[-1] * 64`` inputs: 2048 by
    default) to 10 logits. Input (B, 64) pixel rows or (B, 1, 8, 8) images. A plain
    ``nn.Sequential`` (its first module only reshapes), so optimizers can walk its layers."""
    layers: list[nn.Module] = [_AsImage()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.ReLU()]
            c_in = c
        layers += [nn.Flatten(), nn.Linear(c_in * 64, 10)]
    return nn.Sequential(*layers)


class _AsImage(nn.Module):
    """(B, 64) pixel rows -> (B, 1, 8, 8) images; images pass unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.ndim == 4 else x.reshape(x.shape[0], 1, 8, 8)


def autoencoder_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Gaussian negative log-likelihood up to a constant, batch mean.

    .. math:: L = \frac{1}{B} \sum_{b=1}^{B} \tfrac12 \lVert \mathrm{out}_b - \mathrm{target}_b \rVert^2

    ``out``, ``target``: (B, D). This is the loss whose Fisher is
    :math:`\mathbb{E}_b[J_b^\top J_b]` (unit-variance Gaussian likelihood).
    """
    return 0.5 * ((out - target) ** 2).sum(1).mean()


def autoencoder_task(seed: int = 0, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Task:
    """The digits autoencoder on all 1797 digits (target = input), Gaussian likelihood."""
    X, _ = load_digits_tensors(dtype=dtype, device=device)
    return Task(digits_autoencoder(seed=seed).to(device=device, dtype=dtype), X, X, autoencoder_loss, "gaussian")


def classifier_task(seed: int = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> Task:
    """The digits classifier MLP on all 1797 digits, cross-entropy (softmax likelihood)."""
    X, y = load_digits_tensors(dtype=dtype, device=device)
    return Task(digits_classifier(seed=seed).to(device=device, dtype=dtype), X, y, nn.functional.cross_entropy,
                "softmax")


def cnn_task(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Task:
    """:func:`digits_cnn` on all 1797 digits, cross-entropy (softmax likelihood); meant
    for mini-batches of :data:`CNN_BATCH`."""
    X, y = load_digits_tensors(dtype=dtype, device=device)
    return Task(digits_cnn(seed=seed).to(device=device, dtype=dtype), X, y, nn.functional.cross_entropy, "softmax")
