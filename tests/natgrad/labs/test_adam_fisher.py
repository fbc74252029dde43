"""Adam's second moment against the per-example empirical Fisher (BackPACK's SumGradSquared)
and the lesson-1 identity E[g_batch^2] = mu^2 + (s - mu^2) / B, exactly over every batch;
the lab snapshot against BackPACK and against experiments.run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from natgrad.experiments import Spec, run
from natgrad.labs.adam_fisher import adam_fisher_snapshot, log_correlation
from tests.natgrad.models import mlp

backpack = pytest.importorskip("backpack")
from backpack.extensions import BatchGrad, DiagGGNExact, SumGradSquared  # noqa: E402


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _adam_v_after_one_step(model, X, y, beta2=0.999):
    """Adam's exp_avg_sq after one step on (X, y), from torch.optim.Adam itself."""
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, beta2))
    out = torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], params, strict=True)),
                                     (X,))
    nn.functional.cross_entropy(out, y).backward()
    grad = _flat(p.grad for p in params)
    opt.step()
    return _flat(opt.state[p]["exp_avg_sq"] for p in params), grad


def test_adam_second_moment_vs_empirical_fisher_exactly_as_lesson_1_says():
    """(1) After one step v = (1 - beta2) g_batch^2, so v / (1 - beta2) is the squared batch-mean
    gradient. (2) Averaged over all N^2 ordered batches of B = 2 examples drawn with replacement,
    that square is mu^2 + (s - mu^2) / 2 with s = diag of the empirical Fisher (per-example squares,
    from BackPACK's SumGradSquared) and mu the full-data mean gradient; with B = 1 it is s itself."""
    g = torch.Generator().manual_seed(0)
    N = 10
    X, y = torch.randn(N, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (N,), generator=g)
    model = backpack.extend(mlp((3, 4, 3), seed=0))
    lossfunc = backpack.extend(nn.CrossEntropyLoss(reduction="mean"))
    with backpack.backpack(SumGradSquared(), BatchGrad()):
        lossfunc(model(X), y).backward()
    # BackPACK differentiates the mean loss: its per-example gradients are g_n / N
    s = N * _flat(p.sum_grad_squared for p in model.parameters())  # (1/N) sum g_n^2
    per_example = N * torch.cat([p.grad_batch.reshape(N, -1) for p in model.parameters()], 1)  # (N, P)
    mu = per_example.mean(0)
    torch.testing.assert_close(mu, _flat(p.grad for p in model.parameters()), rtol=1e-12, atol=1e-15)

    plain = mlp((3, 4, 3), seed=0)
    v, grad = _adam_v_after_one_step(plain, X[:2], y[:2])
    torch.testing.assert_close(v, (1 - 0.999) * grad**2, rtol=1e-15, atol=0)  # torch: 0 * b2 + (1 - b2) g g

    squares = [_adam_v_after_one_step(plain, X[[i, j]], y[[i, j]])[0] / (1 - 0.999)
               for i, j in itertools.product(range(N), repeat=2)]
    torch.testing.assert_close(torch.stack(squares).mean(0), mu**2 + (s - mu**2) / 2, rtol=1e-9, atol=1e-15)
    singles = torch.stack([_adam_v_after_one_step(plain, X[[i]], y[[i]])[0] / (1 - 0.999) for i in range(N)]).mean(0)
    torch.testing.assert_close(singles, s, rtol=1e-9, atol=1e-15)
    assert float((s - mu**2).min()) >= 0 and float(((mu**2 + (s - mu**2) / 2) / s).max()) < 1  # B = 2 shrinks it


def test_snapshot_against_backpack_and_the_run_it_reproduces():
    snap = adam_fisher_snapshot(step=5, batch_size=32, lr=1e-2)
    traj = run(Spec.make({"lr": 1e-2, "beta2": 0.999}, task="digits-classifier", optimizer="adam", steps=5,
                         batch_size=32, dtype="float64"))
    assert snap.loss == traj.loss  # the same batches and steps as experiments.run
    # rebuild the model at the snapshot and ask BackPACK
    from natgrad.experiments import make_stepper, make_task

    task = make_task("digits-classifier", 0, torch.device("cpu"), torch.float64)
    stepper = make_stepper("adam", task, {"lr": 1e-2})
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        stepper.step(*task.batch(32, gen))
    model = backpack.extend(task.model)
    lossfunc = backpack.extend(nn.CrossEntropyLoss(reduction="mean"))
    with backpack.backpack(SumGradSquared(), DiagGGNExact()):
        lossfunc(model(task.inputs), task.targets).backward()
    N = task.inputs.shape[0]
    np.testing.assert_allclose(snap.empirical, N * _flat(p.sum_grad_squared for p in model.parameters()).numpy(),
                               rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(snap.true, _flat(p.diag_ggn_exact for p in model.parameters()).numpy(),
                               rtol=1e-9, atol=1e-18)  # softmax cross-entropy: Fisher = GGN
    v = _flat(stepper.optimizer.state[p]["exp_avg_sq"] for p in task.model.parameters()).numpy() / (1 - 0.999**5)
    np.testing.assert_allclose(snap.v, v, rtol=1e-12)
    np.testing.assert_allclose(np.diag(snap.layer_fisher), snap.true[-330:], rtol=1e-9, atol=1e-18)
    assert snap.layer_fisher.shape == (330, 330) and np.allclose(snap.layer_fisher, snap.layer_fisher.T)
    np.testing.assert_allclose(snap.expected_batch_square, snap.mean_grad_sq + (snap.empirical - snap.mean_grad_sq) / 32)


def test_log_correlation():
    a = np.array([1.0, 10.0, 100.0, 0.0])
    assert log_correlation(a, a**2) == pytest.approx(1.0)  # zeros dropped, logs exactly linear
    assert np.isnan(log_correlation(a[:2], a[:2]))
