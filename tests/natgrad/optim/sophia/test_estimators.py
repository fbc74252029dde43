"""Sophia's curvature estimators against exact answers, with tolerances derived from the
number of samples: Hutchinson's mean against the Hessian diagonal from torch.func (its
variance is known in closed form), the Gauss-Newton-Bartlett mean against BackPACK's
DiagGGNExact on a classifier and against the GGN diagonal written out for a (B, T, V)
language model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from natgrad.optim.sophia import gnb_estimate, hutchinson_estimate, sample_labels
from natgrad.tasks.chars import char_transformer, sequence_cross_entropy
from tests.natgrad.models import mlp


def _classifier_data(n=24, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def test_hutchinson_mean_is_the_hessian_diagonal():
    r"""Each estimate is :math:`H_{ii} + \sum_{j \ne i} H_{ij} u_i u_j`: unbiased with variance
    exactly :math:`\sum_{j\ne i} H_{ij}^2`. The mean of M probes must lie within 5 standard
    errors :math:`\sqrt{\sum_{j\ne i} H_{ij}^2 / M}` of the diagonal, and the sample variance
    must match the closed form."""
    X, y = _classifier_data()
    model = mlp((4, 6, 3), seed=1)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss_of(flat):
        params = dict(zip(names, [t.reshape(s) for t, s in zip(flat.split(sizes), shapes, strict=True)], strict=True))
        return nn.functional.cross_entropy(functional_call(model, params, (X,)), y)

    H = hessian(loss_of)(_flat(p.detach() for p in model.parameters()))  # (P, P)
    diag = H.diagonal()
    off = (H**2).sum(1) - diag**2  # sum_{j != i} H_ij^2

    M = 400
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(M):
        grads, est = hutchinson_estimate(list(model.parameters()), nn.functional.cross_entropy(model(X), y), gen)
        draws.append(_flat(est))
    draws = torch.stack(draws)  # (M, P)
    assert torch.all(draws.min(0).values < 0) or torch.any(draws < 0)  # Hutchinson can be negative
    se = (off / M).sqrt()
    assert torch.all((draws.mean(0) - diag).abs() <= 5 * se + 1e-12)
    torch.testing.assert_close(draws.var(0), off, rtol=0.35, atol=1e-12)
    # the gradient it returns is the ordinary one
    model.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    torch.testing.assert_close(_flat(grads), _flat(p.grad for p in model.parameters()), rtol=1e-12, atol=0)


def _z_test(draws: torch.Tensor, exact: torch.Tensor, z: float = 5.0) -> torch.Tensor:
    """z-scores of the sample mean against ``exact`` with the standard error sd / sqrt(M).
    Coordinates whose exact value is zero up to rounding (no gradient reaches them, or, in
    attention, the key bias that the softmax cancels) must have a mean that is zero up to
    rounding too."""
    M = draws.shape[0]
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(M)
    scale = float(exact.abs().max())
    zero = exact.abs() <= 1e-12 * scale
    assert torch.all(mean[zero].abs() <= 1e-12 * scale)
    zs = (mean[~zero] - exact[~zero]) / se[~zero]
    assert float(zs.abs().max()) < z, f"largest |z| {float(zs.abs().max()):.2f}"
    assert 0.5 < float((zs**2).mean()) < 1.6  # errors of the size the sample count predicts
    return zs


def test_gnb_mean_is_backpacks_ggn_diagonal():
    """E[B g(y~p)^2] = diag((1/B) sum_b J_b^T H_b J_b), BackPACK's DiagGGNExact for a mean
    cross-entropy; M draws of sampled labels, z-test with the draws' own standard error."""
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import DiagGGNExact

    X, y = _classifier_data()
    model = backpack.extend(mlp((4, 6, 3), seed=2))
    lossfunc = backpack.extend(nn.CrossEntropyLoss(reduction="mean"))
    with backpack.backpack(DiagGGNExact()):
        lossfunc(model(X), y).backward()
    exact = _flat(p.diag_ggn_exact for p in model.parameters())

    plain = mlp((4, 6, 3), seed=2)  # the same weights without BackPACK's hooks
    gen = torch.Generator().manual_seed(1)
    out = plain(X)  # one forward; every draw samples new labels and back-propagates through it
    draws = torch.stack([_flat(gnb_estimate(list(plain.parameters()), out, nn.functional.cross_entropy, "softmax",
                                            gen)) for _ in range(1000)])
    assert torch.all(draws >= 0)  # a square: never negative
    _z_test(draws, exact)


def test_gnb_on_sequence_outputs_is_the_ggn_diagonal_over_positions():
    r"""Logits (B, T, V): every position is a term, B T labels are sampled and the factor is B T.
    The exact diagonal, from the output Jacobian :math:`J` (torch.func.jacrev) and
    :math:`H = \mathrm{diag}(p) - pp^\top`, is
    :math:`\frac{1}{BT}\sum_{b,t} \big(\sum_c p_c J_{ci}^2 - (\sum_c p_c J_{ci})^2\big)`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (2, 4), generator=g)
    model = char_transformer(seed=1, vocab=7, context=4, width=8, heads=2, layers=1).double()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    J = jacrev(lambda ps: functional_call(model, ps, (x,)))(params)  # name -> (B, T, V, *shape)
    J = torch.cat([J[n].reshape(2, 4, 7, -1) for n in names], dim=-1)  # (B, T, V, P)
    with torch.no_grad():
        p = torch.softmax(model(x), -1).unsqueeze(-1)  # (B, T, V, 1)
    exact = ((p * J**2).sum(2) - (p * J).sum(2) ** 2).mean((0, 1))  # (P,)

    gen = torch.Generator().manual_seed(2)
    out = model(x)
    draws = torch.stack([_flat(gnb_estimate(list(model.parameters()), out, sequence_cross_entropy, "softmax", gen))
                         for _ in range(1500)])
    _z_test(draws, exact)


def test_sampled_labels_follow_the_softmax_at_every_position():
    """Frequencies of 20000 draws per position against softmax probabilities (binomial standard
    error), for (B, T, V) logits; Gaussian samples have mean f and unit variance."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    draws = sample_labels(logits.expand(20000, 2, 3, 4), "softmax", g)  # (M, 2, 3): M copies at once
    assert draws.shape == (20000, 2, 3) and draws.dtype == torch.int64
    freq = torch.stack([(draws == c).double().mean(0) for c in range(4)], -1)  # (2, 3, 4)
    p = torch.softmax(logits, -1)
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / 20000).sqrt())
    f = torch.randn(5, 2, generator=g, dtype=torch.float64)
    ys = sample_labels(f.expand(20000, 5, 2), "gaussian", g)
    assert torch.all((ys.mean(0) - f).abs() < 5 / math.sqrt(20000)) and torch.all((ys.var(0) - 1).abs() < 0.05)
