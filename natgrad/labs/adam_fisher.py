r"""Adam's second moment next to the diagonal of the empirical and the true Fisher.

    snap = adam_fisher_snapshot(step=200, batch_size=64, lr=1e-2)
    snap.v, snap.empirical, snap.true          # (P,) each, one entry per parameter
    snap.correlations["v vs empirical Fisher"]
    snap.layer_fisher                           # the output layer's full (330, 330) Fisher

The digits classifier of the registry (``digits-classifier``: 64-32-10, tanh, 2410
parameters) is trained by the registry's Adam with mini-batches drawn exactly as
``experiments.run`` draws them (same generator, same seed), so the snapshot at step t
is the state of ``run(Spec(task="digits-classifier", optimizer="adam", ...))`` after t
updates. Then, at those weights and on all 1797 digits:

* ``v``: Adam's bias-corrected second moment :math:`\hat v_t = v_t / (1-\beta_2^t)`, an
  EMA of squared mini-batch-mean gradients with the observed labels (Kingma & Ba 2015);
* ``empirical``: :math:`\operatorname{diag}\tilde F = \frac1N\sum_n g_n^2`, squared
  per-example gradients with the observed labels (Kunstner et al. 2019, arXiv 1905.12558);
* ``true``: :math:`\operatorname{diag}F`, the expectation over labels drawn from the model
  (exact: a sum over the 10 classes), :func:`natgrad.curvature.diag_fisher`;
* ``mean_grad_sq``: :math:`\mu^2`, the squared full-data mean gradient. For a batch of B
  examples drawn with replacement, :math:`\mathbb{E}[\bar g^2] = \mu^2 + (\tilde F_{ii} - \mu^2)/B`
  (``expected_batch_square``), which is what a freshly reset :math:`\hat v` estimates.

Correlations are Pearson correlations of the base-10 logarithms over the parameters
(zeros dropped), the quantity a log-log scatter shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from natgrad.curvature import diag_fisher, exact_fisher, layer_slices
from natgrad.experiments import make_stepper, make_task

TASK = "digits-classifier"


@dataclass(frozen=True)
class AdamFisherSnapshot:
    step: int
    batch_size: int | None
    lr: float
    loss: list[float]  # training (mini-batch) loss before each update, as run() records it
    full_loss: float  # loss on all digits at the snapshot
    v: np.ndarray  # (P,) bias-corrected second moment; zeros at step 0
    empirical: np.ndarray  # (P,)
    true: np.ndarray  # (P,)
    mean_grad_sq: np.ndarray  # (P,)
    expected_batch_square: np.ndarray  # (P,) mu^2 + (empirical - mu^2) / B (B = N for full batch)
    layer_names: list[str]
    boundaries: list[int]  # index where each layer after the first starts
    layer: str  # the layer whose full Fisher is in layer_fisher
    layer_fisher: np.ndarray  # (p, p) true Fisher of that layer's weight and bias
    correlations: dict[str, float]


def log_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of log10(a) and log10(b) over entries where both are positive (nan if < 3)."""
    keep = (a > 0) & (b > 0)
    if keep.sum() < 3:
        return float("nan")
    return float(np.corrcoef(np.log10(a[keep]), np.log10(b[keep]))[0, 1])


def adam_fisher_snapshot(step: int, batch_size: int | None = 64, lr: float = 1e-2, seed: int = 0,
                         beta2: float = 0.999, progress: Callable[[float, str], None] | None = None
                         ) -> AdamFisherSnapshot:
    """The snapshot of the module docstring after ``step`` Adam updates (``batch_size`` None:
    full batch). ``progress(fraction, what)`` is told how far it got."""
    if step < 0:
        raise ValueError("step must be >= 0")
    report = progress or (lambda fraction, what: None)
    task = make_task(TASK, seed, torch.device("cpu"), torch.float64)
    stepper = make_stepper("adam", task, {"lr": lr, "beta2": beta2})
    gen = torch.Generator(device="cpu").manual_seed(seed)  # as experiments.run draws batches
    losses = []
    for t in range(step):
        losses.append(stepper.step(*task.batch(batch_size, gen)))
        if (t + 1) % max(1, step // 20) == 0:
            report(0.5 * (t + 1) / step, f"Adam step {t + 1}/{step}")
    model, X, y = task.model, task.inputs, task.targets
    params = [p for p in model.parameters() if p.requires_grad]
    opt = stepper.optimizer
    if step:
        v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params]) / (1 - beta2**step)
    else:
        v = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    with torch.no_grad():
        full_loss = float(task.loss(X, y))
    report(0.5, "empirical Fisher diagonal (squared per-example gradients)")
    emp = diag_fisher(model, X, y, likelihood="softmax", kind="empirical")
    report(0.7, "true Fisher diagonal (expectation over the 10 labels)")
    true = diag_fisher(model, X, y, likelihood="softmax", kind="true")
    report(0.9, "the output layer's full Fisher")
    model.zero_grad(set_to_none=True)
    task.loss(X, y).backward()
    mu2 = torch.cat([p.grad.reshape(-1) for p in params]) ** 2
    model.zero_grad(set_to_none=True)
    B = X.shape[0] if batch_size is None or batch_size >= X.shape[0] else batch_size
    expected = mu2 + (emp - mu2) / B
    # the output layer's full Fisher: a linear softmax layer on the hidden activations
    head = model[-1]
    with torch.no_grad():
        hidden = model[:-1](X)
    block = exact_fisher(head, hidden, y, likelihood="softmax", kind="true")
    slices = layer_slices(model)
    names = list(slices)
    arrays = {k: t.detach().numpy() for k, t in dict(v=v, emp=emp, true=true, mu2=mu2, exp=expected).items()}
    return AdamFisherSnapshot(
        step=step, batch_size=batch_size, lr=lr, loss=losses, full_loss=full_loss, v=arrays["v"],
        empirical=arrays["emp"], true=arrays["true"], mean_grad_sq=arrays["mu2"], expected_batch_square=arrays["exp"],
        layer_names=names, boundaries=[s.start for s in list(slices.values())[1:]], layer=names[-1],
        layer_fisher=block.detach().numpy(),
        correlations={"v vs empirical Fisher": log_correlation(arrays["v"], arrays["emp"]),
                      "v vs true Fisher": log_correlation(arrays["v"], arrays["true"]),
                      "empirical vs true Fisher": log_correlation(arrays["emp"], arrays["true"])},
    )
