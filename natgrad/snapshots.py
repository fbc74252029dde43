"""Curvature snapshots for the labs: the exact Fisher of a tiny digits MLP next
to its block diagonal and its K-FAC approximation, at a chosen training step; and
the same model's gradient and statistics along a training run, for comparing
preconditioners (:mod:`natgrad.preconditioners`).

    snap = fisher_snapshot(train_steps=200)
    snap.matrices["exact Fisher"], snap.errors["K-FAC"], snap.boundaries
    for step, loss, curv in curvature_snapshots([0, 50, 200]): measure(curv, 1e-3)

The model is small on purpose (digits pooled to 4x4 = 16 inputs, 16-12-10-10,
444 parameters) so that the exact (P, P) Fisher can be formed and drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from natgrad.curvature import (
    block_diagonal,
    exact_fisher,
    kfac_factors,
    kfac_matrix,
    layer_slices,
    relative_error,
)
from natgrad.preconditioners import Curvature, from_model
from natgrad.tasks.digits import load_digits_tensors

SMALL_WIDTHS = (16, 12, 10, 10)


@dataclass(frozen=True)
class FisherSnapshot:
    train_steps: int
    train_loss: float
    matrices: dict[str, np.ndarray]  # name -> (P, P)
    errors: dict[str, float]  # name -> relative Frobenius error vs the exact Fisher
    boundaries: list[int]  # parameter index where each layer after the first starts
    layer_names: list[str]
    off_diagonal_share: float  # ||F - blockdiag(F)||_F / ||F||_F


def pooled_digits(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits averaged over 2x2 pixel blocks: (1797, 16) in [0, 1], labels (1797,)."""
    X, y = load_digits_tensors(dtype=dtype)
    X = X.reshape(-1, 1, 8, 8)
    X = nn.functional.avg_pool2d(X, 2).reshape(-1, 16)  # (N, 16)
    return X, y


def small_classifier(seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w = SMALL_WIDTHS
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(w[:-1], w[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(w) - 2:
                layers.append(nn.Tanh())
        return nn.Sequential(*layers).to(dtype)


def fisher_snapshot(train_steps: int = 0, seed: int = 0, lr: float = 1e-2, examples: int = 512) -> FisherSnapshot:
    """Train the small classifier with Adam for ``train_steps`` full-batch steps,
    then compare the exact true Fisher (on ``examples`` digits) with its block
    diagonal and with K-FAC (type-2 factors, the exact expectation)."""
    if train_steps < 0:
        raise ValueError("train_steps must be >= 0")
    if examples < 1:  # (0 gave NaN errors: a Fisher over no examples)
        raise ValueError(f"examples must be >= 1, got {examples}")
    X, y = pooled_digits()
    model = small_classifier(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = nn.functional.cross_entropy(model(X), y)
    for _ in range(train_steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(X), y)
    Xs, ys = X[:examples], y[:examples]
    F = exact_fisher(model, Xs, ys, likelihood="softmax", kind="true")
    B = block_diagonal(F, model)
    K = kfac_matrix(model, kfac_factors(model, Xs, ys, likelihood="softmax", kind="type-2"))
    slices = layer_slices(model)
    return FisherSnapshot(
        train_steps=train_steps,
        train_loss=float(loss),
        matrices={"exact Fisher": F.numpy(), "block diagonal": B.numpy(), "K-FAC": K.numpy()},
        errors={"block diagonal": relative_error(B, F), "K-FAC": relative_error(K, F)},
        boundaries=[s.start for s in list(slices.values())[1:]],
        layer_names=list(slices),
        off_diagonal_share=relative_error(B, F),
    )


def curvature_snapshots(steps: Sequence[int], seed: int = 0, lr: float = 1e-2, examples: int = 512,
                        statistic: str = "true", threads: int = 1,
                        device: torch.device | str = "cpu") -> list[tuple[int, float, Curvature]]:
    """Train the small classifier with Adam (full batch, as :func:`fisher_snapshot`) and at each
    of ``steps`` take ``(step, full-data loss, Curvature)`` on the first ``examples`` digits
    (:func:`natgrad.preconditioners.from_model`; ``statistic`` "true" or "empirical"), in
    float64 on ``device``. Runs on ``threads`` CPU threads (restored afterwards)."""
    wanted = sorted(set(int(t) for t in steps))
    if not wanted or wanted[0] < 0:
        raise ValueError("steps must be non-negative and not empty")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        X, y = (t.to(device) for t in pooled_digits())
        model = small_classifier(seed).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        out = []
        for t in range(wanted[-1] + 1):
            if t in wanted:
                with torch.no_grad():
                    loss = float(nn.functional.cross_entropy(model(X), y))
                out.append((t, loss, from_model(model, X[:examples], y[:examples], "softmax", statistic=statistic,
                                                seed=seed + t)))
            if t < wanted[-1]:
                opt.zero_grad()
                nn.functional.cross_entropy(model(X), y).backward()
                opt.step()
        return out
    finally:
        torch.set_num_threads(previous)
