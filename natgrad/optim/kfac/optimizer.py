r"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015), with a safeguarded step.

Two ways to drive it::

    from natgrad.optim import KFAC
    opt = KFAC(model)                    # defaults train small MLPs and convnets
    for x, y in batches:                 # 1. K-FAC owns the step (the labs and benchmarks)
        loss = opt.step(x, y)            #    forward, backward, factors, update, rho
        record(loss, **opt.stats())      #    damping, rho, alpha, mu, rejected, bound, ...

    opt = KFAC(model, likelihood="softmax")
    for x, y in batches:                 # 2. an ordinary PyTorch loop
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()                       #    or opt.step(closure) to measure rho and reject bad steps

``step(x, y)`` records the model only inside its own steps, so other uses of the model between them
(evaluation, another library's backward pass) neither cost nor change anything. Switching from it to
the loop, the first ``step()`` says that it saw no pass; the passes after it are recorded.

Helpers: :mod:`~natgrad.optim.kfac.capture` (hooks), :mod:`~natgrad.optim.kfac.layers`
(layers, factors), :mod:`~natgrad.optim.kfac.linalg` (damped inverses),
:mod:`~natgrad.optim.kfac.quadratic` (exact-Fisher quadratic model),
:mod:`~natgrad.optim.kfac.safeguard` (step size, trust region, rejection),
:mod:`~natgrad.optim.kfac.damping` (Levenberg-Marquardt), :mod:`~natgrad.optim.kfac.state`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natgrad.optim.kfac.capture import Capture, Record
from natgrad.optim.kfac.damping import DEFAULT_BOUNDS, LevenbergMarquardt
from natgrad.optim.kfac.layers import check_model, find_layers
from natgrad.optim.kfac.linalg import dense_factor, is_eigen
from natgrad.optim.kfac.safeguard import loss_rose, within_rounding
from natgrad.optim.kfac.state import kfac_state_dict, load_kfac_state
from natgrad.optim.kfac.update import UpdateMixin, make_fallback
from natgrad.optim.linalg import EventLog
from natgrad.optim.stepping import warn_on_manifold

LIKELIHOODS = ("auto", "gaussian", "softmax")
FISHER_TYPES = ("true", "empirical", "exact")
STEP_SIZE_RULES = ("fixed", "kl_clip", "quadratic")


class KFAC(UpdateMixin, torch.optim.Optimizer):
    r"""K-FAC for the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model``; other parameters
    (``nn.LayerNorm``/``nn.BatchNorm`` weights and biases, embeddings, grouped convolutions,
    tied weights, bare ``nn.Parameter``) go to a ``fallback`` optimizer (Adam, lr 1e-3) whose
    hyper-parameters are ``param_groups[1]``, so LR schedulers attached to K-FAC reach them.
    A layer the forward pass does not use gets no gradient and is skipped, as torch.optim
    skips a parameter without a gradient.

    Objective :math:`h(\theta) = L(\theta) + \frac\eta2\lVert\theta\rVert^2`, ``likelihood``
    ``"gaussian"``: :math:`L = \frac1N\sum_n \frac12\lVert f(x_n) - y_n\rVert^2`; ``"softmax"``:
    :math:`L = \frac1N\sum_n -\log \mathrm{softmax}(f(x_n))_{y_n}`; ``"auto"``: softmax for
    integer targets, gaussian for floating ones (decided at the first ``step(x, y)``).

    Curvature, per layer :math:`\bar W = [W \mid b]` (:mod:`natgrad.optim.kfac.layers`):
    :math:`F_\ell \approx A \otimes G`, running averages
    :math:`A \leftarrow \beta^k A + (1-\beta^k) A_{\text{batch}}` every :math:`k` = ``factor_update_steps``
    (``factor_decay`` :math:`\beta` per step: a memory of about :math:`1/(1-\beta)` = 20 steps
    whatever the schedule; the first batch initialises). :math:`G` from output gradients
    :math:`g = J_s^\top \nabla_f \ell(f, \tilde y)`, ``fisher_type`` ``"true"``: :math:`\tilde y`
    sampled from the model (one draw per example from ``self.generator``); ``"empirical"``:
    the observed :math:`y` (the loss's own backward pass, for a batch-mean loss);
    ``"exact"``: the expectation in closed form (one backward per output; small outputs).

    Proposal, with :math:`\lambda` = ``damping`` (+ :math:`\eta`), from eigendecompositions
    refreshed every ``inverse_update_steps`` (factors wider than ``wide_factor_dim``: Cholesky
    factors refreshed every ``wide_update_steps``, or, built from fewer rows than half their width,
    kept as those rows and applied by the Woodbury identity, :mod:`natgrad.optim.kfac.linalg`):

    .. math::
        \Delta_\ell = -(G + \tfrac{\sqrt\lambda}{\pi} I)^{-1}\, \nabla_{\bar W_\ell} h\, (A + \pi\sqrt\lambda I)^{-1}
        \quad(\text{``pi_damping=False``: } -(A\otimes G + \lambda I)^{-1}\nabla h).

    ``step_size_rule``: ``"quadratic"`` (default): :math:`\delta = \mathrm{lr}\,(\alpha\Delta + \mu\delta_{k-1})`
    with :math:`(\alpha, \mu)` minimising the exact-Fisher model
    :math:`M(\delta) = \nabla h^\top\delta + \frac12\delta^\top(F + (\lambda+\eta)I)\delta` of the batch
    over :math:`0 \le \mu \le` ``max_momentum`` (``momentum > 0`` switches :math:`\mu` on), then
    scaled into the trust region :math:`\frac12\delta^\top F\delta \le` ``max_kl``
    (:mod:`natgrad.optim.kfac.safeguard`; Martens & Grosse 2015, s. 7). ``curvature_examples=m``
    estimates the :math:`F` terms on a random :math:`m` of the batch (Martens 2010).
    ``"fixed"``: :math:`\delta = \mathrm{lr}\,\Delta + m\,\delta_{k-1}`; ``"kl_clip"``: the same with
    :math:`\mathrm{lr}\,\nu`, :math:`\nu = \min(1, \sqrt{\kappa / (\mathrm{lr}^2 \langle -\Delta, \nabla h\rangle)})`,
    :math:`\kappa` = ``kl_clip`` (Ba, Grosse & Martens 2017).

    ``adaptive_damping`` (default on): every ``damping_adaptation_interval`` steps (default 1),
    :math:`\rho = (h(\theta+\delta) - h(\theta)) / M(\delta)` on the same batch (one extra forward
    pass; buffers such as BatchNorm statistics are restored afterwards); a step whose loss rose
    (:math:`\rho < 0`) is undone and :math:`\lambda` multiplied by 4 at once (``reject_steps``),
    otherwise the Levenberg-Marquardt rule moves :math:`\lambda` within ``damping_bounds``
    (:mod:`natgrad.optim.kfac.damping`). ``stats()`` reports each step's ``rejected`` and
    ``bound`` (trust region or momentum interval active) and their running counts.

    Ordinary loop: after ``loss.backward()`` on a loss of the model's output, ``step()`` uses
    the gradients in ``.grad``, the factors of every forward pass since the last step, and
    needs an explicit ``likelihood``; ``step(closure)`` with ``closure()`` returning the loss on
    the same batch (no backward) also measures :math:`\rho` and may reject the step; without
    a closure the damping is not adapted.

    Robustness: a failing decomposition is retried in float64, then the previous one is kept
    (``events``). A non-finite loss or gradient skips the step and leaves everything, the step
    counter ``steps`` included, as it was (only the event is recorded), so the schedules of
    factor and inverse updates stay aligned with the updates actually made; a non-finite
    update counts as a rejected step. ``lr``, ``damping``, ``momentum``, ``weight_decay``,
    ``kl_clip`` and ``factor_decay`` are read from ``param_groups[0]`` at every step.
    ``state_dict`` holds everything: a resumed run continues bitwise identically on the CPU.

    References: Martens & Grosse, ICML 2015, arXiv 1503.05671; Grosse & Martens, ICML 2016,
    arXiv 1602.01407 (convolutions); Ba, Grosse & Martens, ICLR 2017 (KL clipping);
    Martens, JMLR 2020, arXiv 1412.1193; Nocedal & Wright 2006, ch. 4 (trust regions).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        likelihood: str = "auto",
        lr: float = 1.0,
        damping: float = 1e-1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        factor_decay: float = 0.95,
        factor_update_steps: int = 10,
        inverse_update_steps: int = 10,
        fisher_type: str = "true",
        pi_damping: bool = True,
        adaptive_damping: bool = True,
        damping_adaptation_interval: int = 1,
        damping_bounds: tuple[float, float] = DEFAULT_BOUNDS,
        reject_steps: bool = True,
        step_size_rule: str = "quadratic",
        kl_clip: float = 1e-3,
        max_kl: float | None = 1.0,
        max_momentum: float = 0.95,
        curvature_examples: int | None = None,
        wide_factor_dim: int = 1024,
        wide_update_steps: int = 50,
        fallback: str | type[torch.optim.Optimizer] | None = "adam",
        fallback_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        fisher_type = "exact" if fisher_type == "type-2" else fisher_type
        for value, allowed, what in ((likelihood, LIKELIHOODS, "likelihood"), (fisher_type, FISHER_TYPES, "fisher_type"),
                                     (step_size_rule, STEP_SIZE_RULES, "step_size_rule")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if not (lr >= 0 and damping > 0 and momentum >= 0 and weight_decay >= 0 and 0 <= factor_decay < 1):
            raise ValueError("need lr >= 0, damping > 0, momentum >= 0, weight_decay >= 0, 0 <= factor_decay < 1")
        if min(factor_update_steps, inverse_update_steps, damping_adaptation_interval, wide_update_steps) < 1:
            raise ValueError("update intervals must be >= 1")
        if curvature_examples is not None and curvature_examples < 1:
            raise ValueError(f"curvature_examples must be None or >= 1, got {curvature_examples}")
        if max_kl is not None and not max_kl > 0 or not 0 <= max_momentum or not kl_clip > 0:
            raise ValueError(f"need max_kl > 0 (or None), max_momentum >= 0 and kl_clip > 0 (got {max_kl}, "
                             f"{max_momentum}, {kl_clip})")
        low, high = damping_bounds
        if not 0 < low <= high:
            raise ValueError(f"damping_bounds must be (low, high) with 0 < low <= high, got {tuple(damping_bounds)}")
        self.model = model
        self.layers, rest = find_layers(model)
        if not self.layers:
            raise ValueError("K-FAC found no trainable nn.Linear / nn.Conv2d layer in the model")
        check_model(model, self.layers)
        self.fallback_params = rest
        self.fallback = make_fallback(fallback, rest, fallback_kwargs)
        groups = [{"params": [p for ly in self.layers for p in ly.params]}]
        if self.fallback is not None:
            groups.append({k: v for k, v in self.fallback.param_groups[0].items()} | {"params": rest})
        super().__init__(groups, dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay,
                                      factor_decay=factor_decay, kl_clip=kl_clip))
        warn_on_manifold(self, "K-FAC")
        self.likelihood, self.fisher_type, self.step_size_rule = likelihood, fisher_type, step_size_rule
        self.pi_damping, self.adaptive_damping, self.reject_steps = pi_damping, adaptive_damping, reject_steps
        self.curvature_examples, self.max_kl, self.max_momentum = curvature_examples, max_kl, max_momentum
        self.factor_update_steps, self.inverse_update_steps = factor_update_steps, inverse_update_steps
        self.wide_factor_dim, self.wide_update_steps = wide_factor_dim, wide_update_steps
        self.lm = LevenbergMarquardt(interval=damping_adaptation_interval, bounds=tuple(damping_bounds))
        names = {id(p): n for n, p in model.named_parameters()}
        self._pnames = {ly.name: [names[id(p)] for p in ly.params] for ly in self.layers}
        self._all_params = [p for ly in self.layers for p in ly.params] + rest
        device = self.layers[0].weight.device
        self.generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)
        self.steps = self.rejections = self.bound_hits = 0
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inv: dict[str, list] = {}
        self._prev: dict[str, torch.Tensor] = {}
        self.events = EventLog()
        self.last_loss = self.last_rho = self.last_alpha = self.last_mu = self.last_nu = None
        self.last_step_norm = self.last_kl = None
        self.last_rejected = self.last_bound = False
        self.capture = Capture(model, {ly.name: ly.module for ly in self.layers}, self._on_backward)
        self.capture.output_grads = fisher_type == "empirical"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only while the optimizer is built: which parameters K-FAC updates follows from its model (the
        layers' by K-FAC, the rest by the fallback), so a group added later would never be stepped."""
        if hasattr(self, "capture"):
            raise NotImplementedError(
                "KFAC does not take parameter groups after it is built: it updates its model's nn.Linear and "
                "nn.Conv2d layers and gives the model's other trainable parameters to its fallback optimizer. Make "
                "the new parameters part of the model and build KFAC again, or give them an optimizer of their own.")
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ read-outs
    def remove_hooks(self) -> None:
        """Detach the hooks from the model (the optimizer cannot step afterwards)."""
        self.capture.remove()

    def _record(self, step: int, kind: str, layer: str | None = None, message: str = "") -> None:
        self.events.record(step, kind, layer, message)

    @property
    def event_counts(self) -> dict[str, int]:
        """How many events of each kind (:class:`natgrad.optim.linalg.EventLog`)."""
        return self.events.counts

    @property
    def damping(self) -> float:
        return float(self.param_groups[0]["damping"])

    @damping.setter
    def damping(self, value: float) -> None:
        self.param_groups[0]["damping"] = float(value)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (A, G)}``: the running-average Kronecker factors (a low-rank one as a matrix)."""
        return {n: (dense_factor(A), dense_factor(G)) for n, (A, G) in self._factors.items()}

    def eigenvalues(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """``{layer: (eig(A), eig(G))}`` from the last eigendecomposition, ascending, clamped at 0
        (None for a wide factor kept as a Cholesky factor or a Woodbury form)."""
        return {n: tuple(r[0] if is_eigen(r) else None for r in reps) for n, reps in self._inv.items()}

    def stats(self) -> dict[str, float | None]:
        """Scalars to record per step: this step's ``rejected`` and ``bound`` (1.0 or 0.0) and the
        running counts ``rejections`` and ``bound_hits``, with damping, rho, alpha, mu, nu, kl, ..."""
        return dict(loss=self.last_loss, damping=self.damping, rho=self.last_rho, alpha=self.last_alpha,
                    mu=self.last_mu, nu=self.last_nu, kl=self.last_kl, step_norm=self.last_step_norm,
                    lr=float(self.param_groups[0]["lr"]), events=float(len(self.events)),
                    rejected=float(self.last_rejected), bound=float(self.last_bound),
                    rejections=float(self.rejections), bound_hits=float(self.bound_hits))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._all_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    # ------------------------------------------------------------------ losses and targets
    def _resolve_likelihood(self, targets: torch.Tensor) -> str:
        if self.likelihood == "auto":
            floating = targets.is_floating_point() or targets.is_complex()
            self.likelihood = "gaussian" if floating else "softmax"
        return self.likelihood

    def _loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "gaussian":
            if targets.shape != out.shape:
                raise ValueError(f"the gaussian likelihood needs targets shaped like the output {tuple(out.shape)}, "
                                 f"got {tuple(targets.shape)} (for class labels use likelihood='softmax')")
            return 0.5 * ((out - targets) ** 2).reshape(out.shape[0], -1).sum(1).mean()
        if out.ndim != 2:
            raise ValueError(f"softmax likelihood needs (N, C) logits, got {tuple(out.shape)}")
        return F.cross_entropy(out, targets)

    def _wd_term(self, wd: float) -> float:
        if not wd:
            return 0.0
        return 0.5 * wd * float(sum((p.detach() ** 2).sum() for ly in self.layers for p in ly.params))

    # ------------------------------------------------------------------ step
    def step(self, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None,  # type: ignore[override]
             closure=None) -> float | None:
        """``step(x, y)``: one K-FAC update on the batch, returns the loss before it.
        ``step()`` / ``step(closure)`` after ``loss.backward()``: see the class docstring."""
        if callable(inputs) and targets is None and closure is None:
            inputs, closure = None, inputs
        if inputs is None:
            return self._loop_step(closure)
        if targets is None:
            raise TypeError("step(inputs, targets): targets are missing")
        self._check_inputs(inputs)
        self._resolve_likelihood(targets)
        self.capture.take()  # forward passes of the user's own are not this step's
        self.zero_grad()
        self.capture.listening = True
        try:
            out = self.model(inputs)
            loss = self._loss(out, targets)
            self.last_loss = loss_val = float(loss.detach())
            if not math.isfinite(loss_val):
                self.capture.take()
                self._skip("nonfinite_loss", "non-finite loss; no update")
                return loss_val
            keep_graph = self._needs_graph(self.capture.records)
            loss.backward(retain_graph=keep_graph)
        finally:
            self.capture.listening = False
        records = [r for r in self.capture.take() if r.backward]
        wd = float(self.param_groups[0]["weight_decay"])

        def evaluate() -> float:
            return float(self._loss(self.model(inputs), targets)) + self._wd_term(wd)

        self._update(records, loss_val + self._wd_term(wd), evaluate, graph_alive=keep_graph)
        return loss_val

    def _loop_step(self, closure) -> float | None:
        was_listening, self.capture.listening = self.capture.listening, True
        records = [r for r in self.capture.take() if r.backward]
        if self.likelihood == "auto":
            raise ValueError("K-FAC in an ordinary loop does not see the targets: pass likelihood='softmax' "
                             "(cross-entropy on logits) or likelihood='gaussian' (squared error) to KFAC(...)")
        if not records and not was_listening:  # step(x, y) ignores the model's other passes between its steps
            raise RuntimeError("K-FAC did not record this forward pass: after step(inputs, targets) it records "
                               "the model only inside its own steps. It records again from now on: run the forward "
                               "and backward pass again, then step()")
        if not records:
            raise RuntimeError("step() without a batch needs loss.backward() on a loss of the model's output "
                               "first (or call step(inputs, targets))")
        h0 = evaluate = self.last_loss = None
        if closure is not None:
            def evaluate() -> float:
                return float(closure()) + self._wd_term(float(self.param_groups[0]["weight_decay"]))

            h0 = self._quietly(evaluate)
            self.last_loss = h0
        self._update(records, h0, evaluate, graph_alive=False)
        return h0

    # ------------------------------------------------------------------ the update
    def _update(self, records: list[Record], h0: float | None, evaluate, graph_alive: bool) -> None:
        group = self.param_groups[0]
        lr, lam, mom, wd = (float(group[k]) for k in ("lr", "damping", "momentum", "weight_decay"))
        lam_eff, t = lam + wd, self.steps
        grads = [p.grad for p in self._all_params if p.grad is not None]
        if grads and not bool(torch.stack([g.sum() for g in grads]).isfinite().all()):
            self._skip("nonfinite_grad", "non-finite gradient; no update")
            return
        self._refresh_factors(records, t, float(group["factor_decay"]))
        self._refresh_inverses(t, lam_eff)
        layers = [ly for ly in self.layers if ly.params[0].grad is not None and ly.name in self._inv]
        g = {ly.name: ly.grad_matrix(wd) for ly in layers}
        D = self._proposal(g, lam_eff)
        prev = {n: self._prev[n] for n in g if n in self._prev} if mom > 0 and self._prev else {}
        prev = prev if len(prev) == len(g) else {}
        need_model = evaluate is not None and self.adaptive_damping and self.lm.due(t + 1)
        choice, delta = self._choose(records, layers, g, D, prev, lam_eff, lr, mom, need_model, graph_alive)
        step_norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
        self.last_alpha, self.last_mu, self.last_nu = choice.alpha, choice.mu, choice.nu
        self.last_kl, self.last_step_norm, self.last_bound = choice.kl, step_norm, choice.bound_hit
        self.bound_hits += int(choice.bound_hit)
        self.last_rho, self.last_rejected = None, False
        if not math.isfinite(step_norm):
            self._reject(t, lam, "nonfinite_update", "non-finite update; undone, damping raised")
            return
        saved = {ly.name: [p.detach().clone() for p in ly.params] for ly in layers} if need_model else None
        self._apply(layers, delta)
        if need_model:
            h1 = self._quietly(evaluate)
            pred = choice.predicted
            eps = torch.finfo(self.layers[0].weight.dtype).eps
            self.last_rho = None if within_rounding(h0, h1, pred, eps) else self._rho(h0, h1, pred)
            if self.reject_steps and loss_rose(h0, h1, eps):
                self._restore(layers, saved)
                self._reject(t, lam, "rejected", f"loss {h0:.4g} -> {h1:.4g} (predicted change {pred:.3g})")
                return
            group["damping"] = self.lm.update(lam, self.last_rho)
        if self.fallback is not None:
            self._sync_fallback()
            self.fallback.step()
        self._prev = {n: d.detach() for n, d in delta.items()}
        self.steps += 1

    @staticmethod
    def _rho(h0: float, h1: float, predicted: float) -> float:
        r""":math:`\rho = (h(\theta+\delta) - h(\theta)) / (M(\delta) - M(0))`; NaN if M predicts no decrease."""
        return (h1 - h0) / predicted if predicted < 0 and math.isfinite(h1) else math.nan

    def _reject(self, t: int, lam: float, kind: str, message: str) -> None:
        self.param_groups[0]["damping"] = self.lm.reject(lam)
        self.rejections += 1
        self.last_rejected = True
        self._record(t, kind, None, message)
        self.steps += 1

    def _skip(self, kind: str, message: str) -> None:
        """No update and no change of state (the step counter included); only the event."""
        self._record(self.steps, kind, None, message)
        self.zero_grad()

    # ------------------------------------------------------------------ checkpoints
    def __getstate__(self) -> dict[str, Any]:
        # torch pickles defaults, state and param_groups only: a copy without its model, layers and hooks would
        # fail at its first step, and a copy with them would hold hooks on a model nobody trains
        raise TypeError("a KFAC optimizer cannot be copied or pickled: it owns its model and the hooks on it. Save "
                        "opt.state_dict(); to go on elsewhere, build KFAC on the (copied) model and call "
                        "load_state_dict() with it.")

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Everything needed to continue bitwise identically (see :mod:`natgrad.optim.kfac.state`)."""
        return kfac_state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        load_kfac_state(self, state)
