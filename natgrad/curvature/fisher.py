r"""Exact Fisher, empirical Fisher and GGN of small models, built with ``torch.func``.

For a model :math:`f_\theta` with per-example output Jacobian
:math:`J_n = \partial f_\theta(x_n) / \partial \theta` (C, P) and per-example loss
:math:`\ell(f, y) = -\log p(y \mid f)` (see :mod:`natgrad.curvature.likelihoods`):

* true Fisher   :math:`F = \frac1N \sum_n \mathbb{E}_{\tilde y \sim p(\cdot \mid f_n)} [g_n(\tilde y) g_n(\tilde y)^\top]`,
  :math:`g_n(y) = \nabla_\theta \ell(f_\theta(x_n), y) = J_n^\top \nabla_f \ell`;
* empirical Fisher :math:`\tilde F = \frac1N \sum_n g_n(y_n) g_n(y_n)^\top` (observed labels);
* GGN           :math:`G = \frac1N \sum_n J_n^\top H_n J_n`, :math:`H_n = \nabla_f^2 \ell(f_n, y_n)`.

For cross-entropy and the unit-variance Gaussian :math:`F = G` (Martens 2020).
All matrices are (P, P) in the flattening order of :mod:`natgrad.curvature.params`
and use the *mean* over the N examples (no 1/C factors).

References: Amari, Neural Computation 1998 (natural gradient); Schraudolph,
Neural Computation 2002 (GGN); Martens, JMLR 2020, arXiv 1412.1193;
Kunstner, Balles & Hennig, NeurIPS 2019, arXiv 1905.12558 (empirical Fisher).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from natgrad.curvature.likelihoods import (
    check_likelihood,
    default_targets,
    loss_single,
    output_grads,
    sample_targets,
)
from natgrad.curvature.params import flatten_params, num_params, param_list, require_independent_examples

KINDS = ("true", "empirical", "ggn")
_MAX_JAC_ENTRIES = 2**24  # per chunk: chunk * C * P entries of per-example Jacobians


def _detached_params(model: nn.Module) -> dict[str, torch.Tensor]:
    require_independent_examples(model)
    return {n: p.detach() for n, p in param_list(model)}


def _forward(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return functional_call(model, _detached_params(model), (X,))


def per_example_jacobians(model: nn.Module, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Outputs ``(N, C)`` and output Jacobians :math:`J_n` ``(N, C, P)`` via ``vmap(jacrev)``."""
    params = _detached_params(model)

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)  # (C,)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, X)  # name -> (N, C, *p.shape)
    out = _forward(model, X)
    return out, flatten_params(jac, model, batch_dims=2)


def per_example_grads(model: nn.Module, X: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    r"""Per-example loss gradients :math:`g_n = \nabla_\theta \ell(f_\theta(x_n), y_n)`: ``(N, P)``."""
    params = _detached_params(model)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)
        return loss_single(out, t, likelihood)

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, X, y)
    return flatten_params(g, model, batch_dims=1)


def _chunks(model: nn.Module, X: torch.Tensor, C: int, chunk_size: int | None) -> Iterator[slice]:
    N = X.shape[0]
    if chunk_size is None:
        chunk_size = max(1, _MAX_JAC_ENTRIES // max(1, C * num_params(model)))
    for start in range(0, N, chunk_size):
        yield slice(start, min(N, start + chunk_size))


def _output_factors(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None,
    likelihood: str,
    kind: str,
    mc_samples: int | None,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> Iterator[torch.Tensor]:
    r"""Yield chunks of vectors :math:`u` (K, P) with :math:`\mathrm{curvature} = \frac1N \sum u u^\top`."""
    check_likelihood(likelihood)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    X = X.detach()  # the results carry no autograd graph (part of it would be missing: outputs under no_grad)
    out = _forward(model, X)  # (N, C)
    if out.ndim != 2:
        raise ValueError(f"the model's output must have shape (N, C), one row of C outputs per example; it has shape "
                         f"{tuple(out.shape)}" + (" (return (N, 1) for one output per example)" if out.ndim == 1 else ""))
    N, C = out.shape

    if kind == "empirical" or (kind == "true" and mc_samples is not None):
        if kind == "empirical":
            if y is None:
                raise ValueError("the empirical Fisher needs the observed targets y")
            Xs, ts, weight = X, y, 1.0
        else:  # all draws at once: (M*N, ...) targets against X repeated M times
            if mc_samples < 1:
                raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
            ts = sample_targets(out, likelihood, generator, num_draws=mc_samples).flatten(0, 1)  # (M*N, ...)
            Xs, weight = X.repeat(mc_samples, *([1] * (X.ndim - 1))), 1.0 / mc_samples
        for sl in _chunks(model, Xs, 1, chunk_size):
            yield per_example_grads(model, Xs[sl], ts[sl], likelihood) * weight**0.5  # (n, P)
        return

    for sl in _chunks(model, X, C, chunk_size):
        f, J = per_example_jacobians(model, X[sl])  # (n, C), (n, C, P)
        if kind == "true" and likelihood == "gaussian":
            # E_y[(f - y)(f - y)^T] = I, so F_n = J_n^T J_n
            yield J.reshape(-1, J.shape[-1])
        elif kind == "true":  # softmax: F_n = sum_c p_c g_c g_c^T with g_c = J^T dl/df(label c)
            p = torch.softmax(f, dim=-1)  # (n, C)
            n = f.shape[0]
            r = torch.stack(
                [output_grads(f, torch.full((n,), c, device=f.device), likelihood) for c in range(C)]
            )  # (C_label, n, C)
            r = r * p.T.sqrt().unsqueeze(-1)  # weight sqrt(p_c)
            yield torch.einsum("knc,ncp->nkp", r, J).reshape(-1, J.shape[-1])
        else:  # ggn: H_n by autodiff, factorised H = L L^T (eigh, H is PSD and may be singular)
            t = default_targets(f, likelihood) if y is None else y[sl]
            H = vmap(hessian(loss_single), in_dims=(0, 0, None))(f, t, likelihood)  # (n, C, C)
            evals, evecs = torch.linalg.eigh(H)
            L = evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)  # (n, C, C), L L^T = H
            yield torch.einsum("ncp,nck->nkp", J, L).reshape(-1, J.shape[-1])


def exact_fisher(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    likelihood: str = "softmax",
    kind: str = "true",
    mc_samples: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""The dense (P, P) Fisher / empirical Fisher / GGN, mean over the N examples.

    ``kind="true"``: :math:`F = \frac1N\sum_n \mathbb{E}_{\tilde y\sim p(\cdot\mid f_n)}[g g^\top]`.
    Exact by default: softmax sums over all C labels weighted by :math:`p_c`;
    gaussian uses :math:`\mathbb{E}[(f-\tilde y)(f-\tilde y)^\top] = I`, i.e.
    :math:`F = \frac1N\sum_n J_n^\top J_n`. With ``mc_samples=M`` the expectation is
    replaced by M sampled targets per example (``generator`` seeds them):
    :math:`\hat F = \frac{1}{NM}\sum_{n,m} g_n(\tilde y_{nm}) g_n(\tilde y_{nm})^\top`.

    ``kind="empirical"``: :math:`\tilde F = \frac1N\sum_n g_n(y_n) g_n(y_n)^\top` with
    the observed ``y`` (softmax: (N,) int64; gaussian: (N, C), ``y = X`` for the
    autoencoder). Per-example gradients by ``vmap(grad)``.

    ``kind="ggn"``: :math:`G = \frac1N\sum_n J_n^\top H_n J_n` with :math:`H_n` the
    autodiff Hessian of the per-example loss w.r.t. the outputs (independent of
    ``y`` for both likelihoods; ``y`` is used when given). Equals the true Fisher.

    Memory: per-example Jacobians (chunk, C, P) are formed in chunks of
    ``chunk_size`` examples (default: about 2**24 entries per chunk); the result
    is P x P, so keep P to a few thousand.

    References: Martens, JMLR 2020, arXiv 1412.1193 (sections 5, 9);
    Kunstner, Balles & Hennig, NeurIPS 2019, arXiv 1905.12558.
    """
    P = num_params(model)
    first = next(iter(param_list(model)))[1]
    F = torch.zeros(P, P, dtype=first.dtype, device=first.device)
    for U in _output_factors(model, X, y, likelihood, kind, mc_samples, generator, chunk_size):
        F.addmm_(U.T, U)  # += U^T U
    return F / X.shape[0]


def diag_fisher(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    likelihood: str = "softmax",
    kind: str = "true",
    *,
    mc_samples: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""The diagonal (P,) of :func:`exact_fisher`, without forming a P x P matrix.

    :math:`\mathrm{diag}(F)_i = \frac1N \sum_n \sum_k (U_n)_{ki}^2` where
    :math:`F = \frac1N\sum_n U_n^\top U_n` is the factorisation used by
    :func:`exact_fisher` (rows of :math:`U_n`: per-label gradients weighted by
    :math:`\sqrt{p_c}`, rows of :math:`J_n` for the Gaussian, :math:`L_n^\top J_n`
    for the GGN, sampled or observed per-example gradients). Same arguments and
    meaning as :func:`exact_fisher`. ``kind="empirical"`` is the mean of squared
    per-example gradients — what Adam's second moment would be if it averaged
    per-example rather than mini-batch squares (Kunstner et al. 2019). Sophia's
    Gauss-Newton-Bartlett estimator (Liu et al. 2023, arXiv 2305.14342) is :math:`N\hat g \odot \hat g`
    for the mean gradient :math:`\hat g` with labels drawn from the model: it equals ``kind="true"``
    only in expectation (the per-example scores have mean 0, so the cross terms vanish), not draw by
    draw as ``kind="true"`` with ``mc_samples=1`` would.
    """
    P = num_params(model)
    first = next(iter(param_list(model)))[1]
    d = torch.zeros(P, dtype=first.dtype, device=first.device)
    for U in _output_factors(model, X, y, likelihood, kind, mc_samples, generator, chunk_size):
        d += (U**2).sum(0)
    return d / X.shape[0]
