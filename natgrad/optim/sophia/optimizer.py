r"""Sophia: momentum over an EMA of a diagonal Hessian estimate, clipped per coordinate.

Liu, Li, Hall, Liang & Ma 2023, "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training", arXiv 2305.14342 (ICLR 2024),
Algorithm 3. At step :math:`t = 1, 2, \dots` with mini-batch gradient :math:`g_t`:

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \\
    h_t &= \beta_2 h_{t-k} + (1-\beta_2)\, \hat h_t \ \text{ if } t \bmod k = 1,
           \quad h_t = h_{t-1} \text{ otherwise} \quad (h_{1-k} = 0), \\
    \theta_t &\leftarrow \theta_t - \eta \lambda \theta_t \quad \text{(decoupled weight decay)}, \\
    \theta_{t+1} &= \theta_t - \eta\, \operatorname{clip}\!\Big(\frac{m_t}{\max(\gamma h_t, \epsilon)}, 1\Big),

with :math:`\operatorname{clip}(z, 1) = \max(\min(z, 1), -1)` per coordinate, no bias
correction, :math:`k` = ``update_period`` (10 in the paper), :math:`\gamma` = ``rho``
and :math:`\hat h_t` a fresh estimate of the Hessian diagonal at :math:`\theta_t`
from :mod:`natgrad.optim.sophia.estimators`: Gauss-Newton-Bartlett (Sophia-G) or
Hutchinson (Sophia-H). Where :math:`\gamma h \le \epsilon` (negative or tiny
curvature) the step is :math:`\eta\operatorname{sign}(m)`; each coordinate moves at
most :math:`\eta` per step (a trust region in the max-norm).

Batch-size scaling of :math:`\gamma`. The paper's GNB estimate carries the factor
B (the number of averaged loss terms) so that its expectation is the Gauss-Newton
diagonal whatever the batch size, and :math:`\gamma` does not depend on B. The
authors' code (``SophiaG``; packaged as ``sophia-opt``) keeps the EMA of
:math:`\nabla\hat L \odot \nabla\hat L` *without* B and divides by
:math:`\rho\, \mathrm{bs}\, h + 10^{-15}`, with ``bs`` the tokens per step: the same
update when their ``rho`` equals our :math:`\gamma` and ``bs`` equals B. Without the
factor, :math:`\gamma` would have to grow in proportion to the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from natgrad.curvature.likelihoods import check_likelihood
from natgrad.optim.linalg import EventLog, all_finite
from natgrad.optim.sophia.estimators import LossFn, gnb_estimate, hutchinson_estimate
from natgrad.optim.stepping import KeepsAttributes, begin_step, warn_on_manifold

ESTIMATORS = ("gnb", "hutchinson")


class Sophia(KeepsAttributes, torch.optim.Optimizer):
    r"""Sophia (Liu et al. 2023, arXiv 2305.14342); update rule in the module docstring.

    Usage, Sophia-G on a classifier (``loss_fn(logits, labels)`` averaging B terms)::

        opt = Sophia(model.parameters(), lr=1e-3, rho=0.04, update_period=10)
        for x, y in batches:
            opt.zero_grad()
            logits = model(x)
            if opt.hessian_due():
                opt.update_hessian_gnb(logits, loss_fn, "softmax")   # labels sampled from the model
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()

    Sophia-H: compute ``loss``, then ``opt.update_hessian_hutchinson(loss)`` when due
    (it also sets the gradients) instead of ``loss.backward()``. :class:`SophiaStepper`
    does either for a task.

    Args:
        params: parameters or parameter groups (``lr``, ``betas``, ``rho``, ``eps`` and
            ``weight_decay`` may differ per group).
        lr: :math:`\eta`. betas: :math:`(\beta_1, \beta_2)`. rho: :math:`\gamma`.
        weight_decay: :math:`\lambda` (decoupled: :math:`\theta \leftarrow (1-\eta\lambda)\theta`).
        eps: :math:`\epsilon`, the floor of the denominator.
        update_period: :math:`k`; the estimate is refreshed before steps 1, k+1, 2k+1, ...
        seed: seeds the generator of sampled labels and probes (a CPU generator, so the draws
            are the same on every device; its state is saved in :meth:`state_dict`).
        skip_nonfinite: a step whose gradients hold NaN/inf changes nothing (parameters,
            state, counters) and is recorded in ``events`` (kind ``"nonfinite_grad"``);
            a non-finite estimate is not averaged in (``"nonfinite_hessian"``).

    Defaults are those of the authors' ``SophiaG`` (lr 1e-4, betas (0.965, 0.99), rho
    0.04, weight decay 0.1, :math:`\epsilon = 10^{-15}`, which they add to the denominator
    where we take the maximum: the same wherever :math:`\gamma h \gg \epsilon`) and k = 10.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 0.1, *, eps: float = 1e-15, update_period: int = 10, seed: int = 0,
                 skip_nonfinite: bool = True):
        if not lr >= 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"need lr >= 0 and betas in [0, 1), got lr={lr}, betas={betas}")
        if not rho > 0 or not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"need rho > 0, eps > 0 and weight_decay >= 0, got {rho}, {eps}, {weight_decay}")
        if int(update_period) != update_period or update_period < 1:
            raise ValueError(f"update_period must be a positive integer, got {update_period}")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        warn_on_manifold(self)
        self.update_period = int(update_period)
        self.seed = seed
        self.skip_nonfinite = skip_nonfinite
        self.steps = 0  # updates taken (skipped ones not counted)
        self.hessian_updates = 0
        self.skipped_steps = 0
        self.events = EventLog()
        self._refreshed_at: int | None = None  # value of `steps` at the last refresh
        self._generator: torch.Generator | None = None
        self._last: list[tuple[float, list[torch.Tensor]]] = []  # (lr, clipped ratios) of the last step
        self._hessian_summary: dict[str, float] | None = None

    # ------------------------------------------------------------------ helpers
    def params(self) -> list[torch.Tensor]:
        """Every parameter that requires a gradient, in ``param_groups`` order."""
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def generator(self) -> torch.Generator:
        """The generator of sampled labels and Rademacher probes: a CPU generator, so that a seed
        gives the same labels and probes on every device (as ``Task.batch`` draws batches)."""
        if self._generator is None:
            self._generator = torch.Generator(device="cpu").manual_seed(self.seed)
        return self._generator

    def _state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    # ------------------------------------------------------------------ curvature
    def hessian_due(self) -> bool:
        """Whether the next step is one of 1, k+1, 2k+1, ... and its estimate is not in yet."""
        return self.steps % self.update_period == 0 and self._refreshed_at != self.steps

    @torch.no_grad()
    def update_hessian(self, estimates: Sequence[torch.Tensor | None]) -> bool:
        r""":math:`h \leftarrow \beta_2 h + (1-\beta_2)\hat h` for each parameter of :meth:`params`
        (``estimates`` in that order; None leaves a parameter's ``h`` alone). A non-finite
        estimate changes nothing and is recorded. Returns whether ``h`` was updated."""
        params = self.params()
        if len(estimates) != len(params):
            raise ValueError(f"got {len(estimates)} estimates for {len(params)} parameters")
        self._refreshed_at = self.steps
        given = [(p, e) for p, e in zip(params, estimates, strict=True) if e is not None]
        if not given:
            return False
        if self.skip_nonfinite and not all_finite(*[e for _, e in given]):
            bad = [i for i, e in enumerate(estimates) if e is not None and not bool(torch.isfinite(e).all())]
            self.events.record(self.steps, "nonfinite_hessian", None,
                               f"curvature estimate not averaged in: non-finite in parameter(s) {bad}")
            return False
        beta2 = {id(p): g["betas"][1] for g in self.param_groups for p in g["params"]}
        for p, e in given:
            self._state(p)["hessian"].mul_(beta2[id(p)]).add_(e, alpha=1 - beta2[id(p)])
        self.hessian_updates += 1
        self._hessian_summary = None
        return True

    def update_hessian_gnb(self, outputs: torch.Tensor, loss_fn: LossFn, likelihood: str = "softmax",
                           batch_terms: int | None = None) -> bool:
        """Refresh ``h`` with the Gauss-Newton-Bartlett estimate on these outputs (labels sampled
        from the model; see :func:`natgrad.optim.sophia.estimators.gnb_estimate`)."""
        est = gnb_estimate(self.params(), outputs, loss_fn, likelihood, self.generator(), batch_terms)
        return self.update_hessian(est)

    def update_hessian_hutchinson(self, loss: torch.Tensor) -> bool:
        """Refresh ``h`` with Hutchinson's estimate and set every ``p.grad`` to the gradient of
        ``loss`` (call it instead of ``loss.backward()``)."""
        params = self.params()
        grads, est = hutchinson_estimate(params, loss, self.generator())
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)
        return self.update_hessian(est)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        """One Sophia update from ``p.grad`` (parameters without a gradient are skipped);
        returns ``closure()``'s loss when given."""
        loss, work = begin_step(self, closure, dense=False)  # elementwise: sparse gradients work
        if not work:
            return loss
        if self.skip_nonfinite and not all_finite(*[p.grad for _, ps in work for p in ps]):
            grads = [p.grad for _, ps in work for p in ps]
            bad = [i for i, gr in enumerate(grads) if not bool(torch.isfinite(gr).all())]
            self.skipped_steps += 1
            self.events.record(self.steps, "nonfinite_grad", None, f"step skipped: non-finite gradient in "
                               f"parameter(s) {bad} (numbered among those with gradients)")
            return loss
        self.steps += 1
        self._last = []
        for group, ps in work:
            lr, (beta1, _), rho, eps, wd = group["lr"], group["betas"], group["rho"], group["eps"], group["weight_decay"]
            states = [self._state(p) for p in ps]
            for st in states:
                st["step"] += 1
            m = [st["exp_avg"] for st in states]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_mul_(m, beta1)
            torch._foreach_add_(m, [p.grad for p in ps], alpha=1 - beta1)
            den = torch._foreach_mul([st["hessian"] for st in states], rho)
            torch._foreach_clamp_min_(den, eps)  # max(gamma h, eps)
            ratio = torch._foreach_div(torch._foreach_abs(m), den)
            torch._foreach_clamp_max_(ratio, 1.0)  # |clip(m / den, 1)|
            torch._foreach_addcmul_(ps, torch._foreach_sign(m), ratio, value=-lr)
            self._last.append((lr, ratio))
        return loss

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, float | None]:
        """``clipped_fraction`` (coordinates whose step hit the clip at the last step),
        ``step_norm`` (:math:`\\lVert \\eta\\,\\mathrm{clip}(\\cdot) \\rVert_2`, weight decay not
        included), ``hessian_mean``/``hessian_std``/``hessian_negative`` (mean, standard
        deviation and negative fraction of the entries of ``h``), and counters."""
        out: dict[str, float | None] = dict(clipped_fraction=None, step_norm=None)
        if self._last:
            ratios = [r for _, rs in self._last for r in rs]
            sums = torch.stack([torch.stack([(r >= 1).sum().to(r.dtype), (r * r).sum() * lr**2])
                                for lr, rs in self._last for r in rs]).sum(0).tolist()
            n = sum(r.numel() for r in ratios)
            out.update(clipped_fraction=sums[0] / max(n, 1), step_norm=math.sqrt(sums[1]))
        out.update(self._hessian_stats())
        out.update(hessian_updates=float(self.hessian_updates), skipped_steps=float(self.skipped_steps),
                   events=float(len(self.events)))
        return out

    def _hessian_stats(self) -> dict[str, float | None]:
        if self._hessian_summary is None:
            hs = [st["hessian"].reshape(-1) for st in self.state.values() if "hessian" in st]
            if not hs or not self.hessian_updates:
                return dict(hessian_mean=None, hessian_std=None, hessian_negative=None)
            h = torch.cat(hs).double()
            self._hessian_summary = dict(hessian_mean=float(h.mean()), hessian_std=float(h.std(correction=0)),
                                         hessian_negative=float((h < 0).double().mean()))
        return self._hessian_summary

    # ------------------------------------------------------------------ checkpoints
    _COUNTERS = ("steps", "hessian_updates", "skipped_steps", "_refreshed_at", "seed")

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["sophia"] = {k: getattr(self, k) for k in self._COUNTERS} | {
            "events": self.events.state_dict(), "update_period": self.update_period,
            "generator": None if self._generator is None else self._generator.get_state()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        extra = state_dict.get("sophia", {})
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "sophia"})
        for k in self._COUNTERS:
            if k in extra:
                setattr(self, k, extra[k])
        self.update_period = extra.get("update_period", self.update_period)
        if "events" in extra:
            self.events.load_state_dict(extra["events"])
        self._generator = None
        if extra.get("generator") is not None:
            self.generator().set_state(extra["generator"])
        self._last, self._hessian_summary = [], None


class SophiaStepper:
    """Sophia as a :class:`natgrad.experiments.Stepper`: ``step(x, y)`` runs the forward pass,
    refreshes the curvature estimate every ``update_period`` steps and updates.

    ``estimator="gnb"`` (Sophia-G) needs ``loss_fn(outputs, labels)`` and the ``likelihood``
    ("softmax" or "gaussian") to sample labels from the model; ``"hutchinson"`` (Sophia-H)
    also works on a model whose forward pass with no input is the objective (``loss_fn``
    None). ``hparams`` go to :class:`Sophia`.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn | None = None, likelihood: str | None = None, *,
                 estimator: str = "gnb", **hparams):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if estimator == "gnb" and (loss_fn is None or likelihood is None):
            raise ValueError("Sophia-G samples labels from the model's own predictions, so it needs "
                             "loss_fn(outputs, labels) and likelihood ('softmax' or 'gaussian'); a model whose "
                             "forward pass with no input is its own objective needs estimator='hutchinson'")
        if likelihood is not None:
            check_likelihood(likelihood)
        self.model, self.loss_fn, self.likelihood, self.estimator = model, loss_fn, likelihood, estimator
        self.optimizer = Sophia(model.parameters(), **hparams)

    def step(self, x: torch.Tensor | None, y: torch.Tensor | None) -> float:
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        due = opt.hessian_due()
        if self.loss_fn is None:
            if x is not None or y is not None:
                raise ValueError("SophiaStepper without loss_fn takes model() as the objective and no batch; "
                                 "to train on (x, y) pass loss_fn(outputs, labels)")
            loss = self.model()
        else:
            out = self.model(x)
            if due and self.estimator == "gnb":
                opt.update_hessian_gnb(out, self.loss_fn, self.likelihood)
            loss = self.loss_fn(out, y)
        if due and self.estimator == "hutchinson":
            opt.update_hessian_hutchinson(loss)
        else:
            loss.backward()
        opt.step()
        return float(loss.detach())

    def stats(self) -> dict[str, float | None]:
        return self.optimizer.stats()
