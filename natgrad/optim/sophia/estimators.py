r"""Sophia's two estimators of the Hessian diagonal (Liu et al. 2023, arXiv 2305.14342, section 2.3).

* Gauss-Newton-Bartlett (GNB, Sophia-G; their Algorithm 2). For a mini-batch whose
  loss averages B terms :math:`\ell(f(\theta, x_b), y_b)`, draw labels from the
  model itself, :math:`\hat y_b \sim p(\cdot \mid f(\theta, x_b))`, form
  :math:`\hat L(\theta) = \frac1B \sum_b \ell(f(\theta, x_b), \hat y_b)` and return

  .. math:: \hat h = B \cdot \nabla_\theta \hat L \odot \nabla_\theta \hat L .

  By Bartlett's first identity the per-term scores have mean zero over
  :math:`\hat y_b`, so the cross terms vanish in expectation and
  :math:`\mathbb{E}[\hat h] = \operatorname{diag}\big(\frac1B \sum_b J_b^\top H_b J_b\big)`,
  the diagonal of the Gauss-Newton matrix (equal to the Fisher's for softmax
  cross-entropy and the unit Gaussian; Martens 2020, arXiv 1412.1193). Never negative.
  For a sequence model with logits (B, T, V) every position is one term: B counts
  all B T sampled characters.
* Hutchinson (Sophia-H; Hutchinson 1989). With a Rademacher probe :math:`u`
  (independent :math:`\pm 1` entries), :math:`\hat h = u \odot (\nabla^2 L\, u)`,
  :math:`\mathbb{E}[\hat h] = \operatorname{diag}(\nabla^2 L)` because
  :math:`\mathbb{E}[u u^\top] = I`. The Hessian-vector product is a second
  backward pass through the graph of the first (``create_graph=True`` only here).
  Can be negative.

Both return one tensor per parameter (None where the loss does not depend on it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from natgrad.curvature.likelihoods import check_likelihood, sample_targets

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_labels(outputs: torch.Tensor, likelihood: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution, for outputs of any leading shape.

    ``"softmax"``: ``outputs`` (..., V) logits -> (...) int64, one ``torch.multinomial`` draw per
    row of ``softmax(outputs).reshape(-1, V)`` (one call on ``generator``).
    ``"gaussian"``: ``outputs + N(0, I)`` of the same shape (one ``torch.randn`` call).
    The draw happens on the generator's device (a CPU generator for outputs on an accelerator
    gives the same labels there as on the CPU) and the labels are returned on the outputs'.
    """
    check_likelihood(likelihood)
    out = outputs.detach()
    if generator is not None and generator.device.type != out.device.type:
        return sample_labels(out.to(generator.device), likelihood, generator).to(out.device)
    if likelihood == "softmax":
        flat = out.reshape(-1, out.shape[-1])  # (N, V)
        return sample_targets(flat, "softmax", generator).reshape(out.shape[:-1])
    return sample_targets(out, "gaussian", generator)


def terms(outputs: torch.Tensor, likelihood: str) -> int:
    """B: how many terms a loss of the course averages over these outputs: every label
    position for softmax (``outputs.numel() // V``), every row for the Gaussian (the
    autoencoder's loss sums over features and averages over rows)."""
    check_likelihood(likelihood)
    return outputs.numel() // outputs.shape[-1] if likelihood == "softmax" else outputs.shape[0]


def gnb_estimate(params: Sequence[torch.Tensor], outputs: torch.Tensor, loss_fn: LossFn, likelihood: str,
                 generator: torch.Generator | None = None, batch_terms: int | None = None) -> list[torch.Tensor | None]:
    r"""The Gauss-Newton-Bartlett estimate :math:`B\,\nabla\hat L \odot \nabla\hat L` (module docstring).

    ``outputs`` must still carry the graph to ``params`` (it is kept, so the caller can
    back-propagate the real loss through the same forward pass). ``loss_fn(outputs, labels)``
    is the task's loss averaging over ``batch_terms`` terms (default :func:`terms`).
    """
    labels = sample_labels(outputs, likelihood, generator)
    B = terms(outputs, likelihood) if batch_terms is None else batch_terms
    sampled = loss_fn(outputs, labels)
    grads = torch.autograd.grad(sampled, list(params), retain_graph=True, allow_unused=True)
    return [None if g is None else (g * g).mul_(B) for g in grads]


def rademacher(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A tensor shaped like ``like`` with independent entries -1 and +1 (probability 1/2 each),
    drawn on the generator's device and returned on ``like``'s."""
    device = like.device if generator is None else generator.device
    u = torch.randint(0, 2, like.shape, generator=generator, device=device, dtype=like.dtype)
    return u.mul_(2).sub_(1).to(like.device)


def hutchinson_estimate(params: Sequence[torch.Tensor], loss: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    r"""``(gradients, estimates)``: :math:`\nabla L` (detached) and :math:`u \odot (\nabla^2 L\,u)`
    with one Rademacher probe per parameter, drawn in ``params`` order from ``generator``.

    ``loss`` must carry its graph; it is consumed (the double-backward graph is freed
    before this returns, so no graph outlives the estimate).
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(grads) if g is not None]
    probes = [rademacher(params[i], generator) for i in used]
    hvps = torch.autograd.grad([grads[i] for i in used], [params[i] for i in used], probes, allow_unused=True)
    estimates: list[torch.Tensor | None] = [None] * len(params)
    for i, u, hv in zip(used, probes, hvps, strict=True):
        estimates[i] = torch.zeros_like(u) if hv is None else hv.detach() * u  # None: the loss is linear in it
    return [None if g is None else g.detach() for g in grads], estimates
