r"""The two likelihoods of the course, as per-example losses on network outputs.

``"softmax"``: categorical over ``C`` classes with logits ``f`` (C,) and integer
label ``y``; loss :math:`\ell(f, y) = -\log \mathrm{softmax}(f)_y` (cross-entropy).
Output Hessian :math:`H = \mathrm{diag}(p) - p p^\top`, :math:`p = \mathrm{softmax}(f)`.

``"gaussian"``: unit-variance Gaussian with mean ``f`` (C,), target ``y`` (C,);
loss :math:`\ell(f, y) = \tfrac12 \lVert f - y \rVert^2`. Output Hessian :math:`H = I`.
(For the autoencoder the target is the input, ``y = X``.)

In both cases the loss is the negative log-likelihood of an exponential family
in its natural parameter, so the generalized Gauss-Newton matrix equals the
Fisher (Martens, JMLR 2020, arXiv 1412.1193, section 9.2).
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

LIKELIHOODS = ("softmax", "gaussian")


def check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def loss_single(f: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Per-example loss: ``f`` (C,), ``y`` () int64 for softmax or (C,) for gaussian."""
    if likelihood == "softmax":
        return -torch.log_softmax(f, dim=-1).gather(-1, y.reshape(1)).squeeze(-1)
    if likelihood == "gaussian":
        return 0.5 * ((f - y) ** 2).sum()
    check_likelihood(likelihood)
    raise AssertionError("unreachable")


def output_grads(out: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    r"""Per-example :math:`\partial \ell / \partial f` by autodiff: ``out`` (N, C) -> (N, C)."""
    return vmap(grad(loss_single), in_dims=(0, 0, None))(out, y, likelihood)


def output_hessian_sqrt(out: torch.Tensor, likelihood: str) -> torch.Tensor:
    r"""A factor ``S`` (N, C, C) with :math:`S_n S_n^\top = \nabla^2_f \ell(f_n, \cdot)`.

    softmax: :math:`S = \mathrm{diag}(\sqrt p) - p \sqrt p^\top` (then
    :math:`SS^\top = \mathrm{diag}(p) - pp^\top` because :math:`\sum_c p_c = 1`;
    Dangel, Kunstner & Hennig 2020, arXiv 1912.10985, eq. 5-6). Column ``c`` is
    :math:`\sqrt{p_c}\,(e_c - p)`, i.e. :math:`\sqrt{p_c}` times minus the gradient of
    the loss for label ``c``: the Fisher's expectation over labels written as a sum.
    gaussian: :math:`S = I`.
    """
    check_likelihood(likelihood)
    N, C = out.shape
    if likelihood == "gaussian":
        return torch.eye(C, dtype=out.dtype, device=out.device).expand(N, C, C)
    p = torch.softmax(out, dim=-1)  # (N, C)
    sp = p.sqrt()
    return torch.diag_embed(sp) - p.unsqueeze(2) * sp.unsqueeze(1)  # (N, C, C)


def sample_targets(
    out: torch.Tensor, likelihood: str, generator: torch.Generator | None = None, num_draws: int | None = None
) -> torch.Tensor:
    r"""Draw targets from the model's predictive distribution.

    softmax: :math:`y_n \sim \mathrm{Cat}(\mathrm{softmax}(f_n))` via
    ``torch.multinomial`` -> (N,) int64. gaussian: :math:`y_n = f_n + \varepsilon_n`,
    :math:`\varepsilon_n \sim \mathcal N(0, I)` -> (N, C). With ``num_draws=M``
    the result is stacked to (M, N) / (M, N, C). Each draw consumes the
    generator exactly like curvlinops' ``KFACLinearOperator.draw_label`` (one
    ``multinomial`` / one ``randn`` of the batch's shape), which lets tests match
    samples with it.
    """
    check_likelihood(likelihood)
    out = out.detach()
    M = 1 if num_draws is None else num_draws
    if M < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if likelihood == "softmax":
        p = torch.softmax(out, dim=1)  # (N, C)
        draws = [p.multinomial(num_samples=1, generator=generator).squeeze(-1) for _ in range(M)]
    else:
        draws = [
            out + torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=generator) for _ in range(M)
        ]
    return draws[0] if num_draws is None else torch.stack(draws)


def default_targets(out: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Placeholder targets where the result does not depend on them (output Hessians)."""
    if likelihood == "softmax":
        return torch.zeros(out.shape[0], dtype=torch.int64, device=out.device)
    return out.detach().clone()
