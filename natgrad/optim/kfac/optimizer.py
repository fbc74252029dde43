r"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015), owning its model.

Usage::

    from natgrad.optim import KFAC
    opt = KFAC(model, likelihood="gaussian", damping=1e-1, adaptive_damping=True,
               step_size_rule="quadratic", momentum=0.9)
    for x, y in batches:
        loss = opt.step(x, y)            # forward, backward, factors, update
        record(loss, **opt.stats())      # damping, rho, alpha, mu, step_norm, ...

Helpers: :mod:`natgrad.optim.kfac.layers` (layers, factors),
:mod:`natgrad.optim.kfac.linalg` (eigendecompositions, damped inverse),
:mod:`natgrad.optim.kfac.quadratic` (exact-Fisher quadratic model),
:mod:`natgrad.optim.kfac.damping` (Levenberg-Marquardt rule).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natgrad.curvature.likelihoods import output_grads, output_hessian_sqrt, sample_targets
from natgrad.optim.kfac.damping import DEFAULT_BOUNDS, LevenbergMarquardt
from natgrad.optim.kfac.layers import find_layers
from natgrad.optim.kfac.linalg import diagonal_fallback, precondition
from natgrad.optim.kfac.quadratic import ggn_inner, graph_jvps, model_change, sequential_jvps, step_coefficients
from natgrad.optim.kfac.state import kfac_state_dict, load_kfac_state
from natgrad.optim.linalg import EventLog, all_finite, robust_eigh

LIKELIHOODS = ("gaussian", "softmax")
FISHER_TYPES = ("true", "empirical", "exact")
STEP_SIZE_RULES = ("fixed", "kl_clip", "quadratic")

Mats = dict[str, torch.Tensor]  # layer name -> (out, in_dim) matrix


def _dot(X: Mats, Y: Mats) -> torch.Tensor:
    return sum((X[n] * Y[n]).sum() for n in X)


class KFAC(torch.optim.Optimizer):
    r"""K-FAC for the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model``; other parameters
    (``nn.LayerNorm``/``nn.BatchNorm`` weights and biases, embeddings, grouped convolutions,
    tied weights, bare ``nn.Parameter``) go to a ``fallback`` optimizer.

    Objective :math:`h(\theta) = L(\theta) + \frac\eta2\lVert\theta\rVert^2` with
    ``likelihood="gaussian"``: :math:`L = \frac1N\sum_n \frac12\lVert f(x_n) - y_n\rVert^2`;
    ``"softmax"``: :math:`L = \frac1N\sum_n -\log \mathrm{softmax}(f(x_n))_{y_n}`.

    Curvature, per layer :math:`\bar W = [W \mid b]` (see :mod:`natgrad.optim.kfac.layers`):
    :math:`F_\ell \approx A \otimes G`, running averages
    :math:`A \leftarrow \beta A + (1-\beta) A_{\text{batch}}` (``factor_decay`` :math:`\beta`; the
    first batch initialises) every ``factor_update_steps``. :math:`G` uses output-gradients
    :math:`g = J_s^\top \nabla_f \ell(f, \tilde y)` with ``fisher_type``:
    ``"true"``: :math:`\tilde y` sampled from the model (categorical / :math:`\mathcal N(f, I)`,
    one draw per example from ``self.generator``); ``"empirical"``: observed :math:`y`;
    ``"exact"`` (alias ``"type-2"``): the expectation in closed form through
    :math:`\nabla_f^2\ell = SS^\top` (one backward per output; small outputs / tests).

    Update, every step, with :math:`\lambda` = ``damping`` (+ :math:`\eta`):

    .. math::
        \Delta_\ell = -(G + \tfrac{\sqrt\lambda}{\pi} I)^{-1}\, \nabla_{\bar W_\ell} h\, (A + \pi\sqrt\lambda I)^{-1}
        \quad(\text{``pi_damping=False``: } -(A\otimes G + \lambda I)^{-1}\nabla h),

    from eigendecompositions refreshed every ``inverse_update_steps``
    (:mod:`natgrad.optim.kfac.linalg`). ``step_size_rule``:

    * ``"fixed"``: :math:`\delta_k = \mathrm{lr}\,\Delta + m\,\delta_{k-1}` (heavy ball, ``momentum`` m);
    * ``"kl_clip"``: as fixed with :math:`\mathrm{lr}\,\nu`,
      :math:`\nu = \min(1, \sqrt{\kappa / (\mathrm{lr}^2 \sum_\ell \langle -\Delta_\ell, \nabla_\ell h\rangle)})`,
      :math:`\kappa` = ``kl_clip`` (Ba, Grosse & Martens 2017; kfac-pytorch);
    * ``"quadratic"``: :math:`\delta_k = \alpha\Delta + \mu\delta_{k-1}` with :math:`(\alpha, \mu)`
      minimising :math:`M(\delta) = \nabla h^\top\delta + \frac12\delta^\top(F + (\lambda+\eta)I)\delta`,
      :math:`F` the exact Fisher/GGN of the batch (:mod:`natgrad.optim.kfac.quadratic`; Martens &
      Grosse 2015, s. 7). ``momentum > 0`` only switches :math:`\mu` on; ``lr`` is not used.
      ``curvature_examples=m`` estimates the :math:`F` terms on a fresh random subset of
      :math:`m` examples per step (the gradient terms stay full-batch), as Hessian-free
      optimisation does for its curvature products (Martens 2010); it cuts the cost of the
      :math:`Jv` products by :math:`m/N`.

    ``adaptive_damping``: every ``damping_adaptation_interval`` steps,
    :math:`\rho = (h(\theta+\delta) - h(\theta)) / M(\delta)` on the batch and the
    Levenberg-Marquardt rule of :mod:`natgrad.optim.kfac.damping` (s. 6.5), clamped to ``damping_bounds``.

    Robustness: a failing eigendecomposition is retried in float64, then the previous one is kept
    (``events``); a non-finite loss, gradient or update skips the step (``events``). ``lr``,
    ``damping``, ``momentum``, ``weight_decay``, ``kl_clip`` and ``factor_decay`` are read from
    ``param_groups[0]`` at every step, so LR schedulers work. ``state_dict`` holds everything
    (factors, eigendecompositions, damping, steps, momentum, fallback state, sampling RNG): a
    resumed run continues bitwise identically on the CPU.

    References: Martens & Grosse, ICML 2015, arXiv 1503.05671; Grosse & Martens, ICML 2016,
    arXiv 1602.01407 (convolutions); Ba, Grosse & Martens, ICLR 2017 (KL clipping);
    Martens, JMLR 2020, arXiv 1412.1193.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        likelihood: str = "gaussian",
        lr: float = 1.0,
        damping: float = 1e-2,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        factor_decay: float = 0.95,
        factor_update_steps: int = 1,
        inverse_update_steps: int = 10,
        fisher_type: str = "true",
        pi_damping: bool = True,
        adaptive_damping: bool = False,
        damping_adaptation_interval: int = 5,
        damping_bounds: tuple[float, float] = DEFAULT_BOUNDS,
        step_size_rule: str = "fixed",
        kl_clip: float = 1e-3,
        curvature_examples: int | None = None,
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
        if min(factor_update_steps, inverse_update_steps, damping_adaptation_interval) < 1:
            raise ValueError("update intervals must be >= 1")
        self.model = model
        self.layers, rest = find_layers(model)
        if not self.layers:
            raise ValueError("K-FAC found no trainable nn.Linear / nn.Conv2d layer in the model")
        defaults = dict(lr=lr, damping=damping, momentum=momentum, weight_decay=weight_decay,
                        factor_decay=factor_decay, kl_clip=kl_clip)
        super().__init__([{"params": [p for ly in self.layers for p in ly.params]}], defaults)
        self.likelihood, self.fisher_type, self.step_size_rule = likelihood, fisher_type, step_size_rule
        self.pi_damping, self.adaptive_damping = pi_damping, adaptive_damping
        if curvature_examples is not None and curvature_examples < 1:
            raise ValueError(f"curvature_examples must be None or >= 1, got {curvature_examples}")
        self.curvature_examples = curvature_examples
        self.factor_update_steps, self.inverse_update_steps = factor_update_steps, inverse_update_steps
        self.lm = LevenbergMarquardt(interval=damping_adaptation_interval, bounds=tuple(damping_bounds))
        self.fallback_params = rest
        self.fallback = self._make_fallback(fallback, rest, fallback_kwargs)
        names = {id(p): n for n, p in model.named_parameters()}
        self._pnames = {ly.name: [names[id(p)] for p in ly.params] for ly in self.layers}
        self._modules_by_name = {ly.name: ly.module for ly in self.layers}
        self._all_params = [p for ly in self.layers for p in ly.params] + rest
        device = self._all_params[0].device
        self.generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)
        self.steps = 0
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._eig: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}
        self._prev: Mats = {}
        self.events = EventLog()
        self.last_loss = self.last_rho = self.last_alpha = self.last_mu = self.last_nu = None
        self.last_step_norm = None
        self._capturing = False
        self._cap_in: dict[str, list[torch.Tensor]] = {}
        self._cap_out: dict[str, list[torch.Tensor]] = {}
        self._handles = [ly.module.register_forward_hook(self._hook(ly.name)) for ly in self.layers]

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _make_fallback(fallback, rest, kwargs) -> torch.optim.Optimizer | None:
        if not rest:
            return None
        if fallback is None:
            warnings.warn(f"{len(rest)} parameter tensor(s) outside Linear/Conv2d layers will not be trained "
                          "(fallback=None)", stacklevel=3)
            return None
        if isinstance(fallback, str):
            classes = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
            if fallback.lower() not in classes:
                raise ValueError(f"fallback must be 'adam', 'sgd', None or an Optimizer class, got {fallback!r}")
            fallback = classes[fallback.lower()]
        if not (isinstance(fallback, type) and issubclass(fallback, torch.optim.Optimizer)):
            raise TypeError(f"fallback must be 'adam', 'sgd', None or an Optimizer class, got {fallback!r}")
        return fallback(rest, **({"lr": 1e-3} if kwargs is None else kwargs))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self._capturing:
                self._cap_in[name].append(inputs[0].detach())
                self._cap_out[name].append(output)

        return hook

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model (the optimizer cannot step afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _record(self, step: int, kind: str, layer: str | None = None, message: str = "") -> None:
        self.events.record(step, kind, layer, message)

    @property
    def event_counts(self) -> dict[str, int]:
        """How many events of each kind (:class:`natgrad.optim.linalg.EventLog`)."""
        return self.events.counts

    # ------------------------------------------------------------------ public read-outs
    @property
    def damping(self) -> float:
        return float(self.param_groups[0]["damping"])

    @damping.setter
    def damping(self, value: float) -> None:
        self.param_groups[0]["damping"] = float(value)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (A, G)}``: the running-average Kronecker factors."""
        return dict(self._factors)

    def eigenvalues(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (eig(A), eig(G))}`` from the last eigendecomposition, ascending, clamped at 0."""
        return {n: (ea[0], eg[0]) for n, (ea, eg) in self._eig.items()}

    def stats(self) -> dict[str, float | None]:
        """Scalars to record per step."""
        return dict(loss=self.last_loss, damping=self.damping, rho=self.last_rho, alpha=self.last_alpha,
                    mu=self.last_mu, nu=self.last_nu, step_norm=self.last_step_norm,
                    lr=float(self.param_groups[0]["lr"]), events=float(len(self.events)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._all_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    # ------------------------------------------------------------------ the pieces of a step
    def _loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return 0.5 * ((out - targets) ** 2).reshape(out.shape[0], -1).sum(1).mean()
        if out.ndim != 2:
            raise ValueError(f"softmax likelihood needs (N, C) logits, got {tuple(out.shape)}")
        return F.cross_entropy(out, targets)

    def _wd_term(self, wd: float) -> float:
        if not wd:
            return 0.0
        return 0.5 * wd * float(sum((p.detach() ** 2).sum() for ly in self.layers for p in ly.params))

    def _cotangents(self, out: torch.Tensor) -> list[torch.Tensor]:
        r"""Per-example :math:`\partial\ell/\partial f` whose outer products average to the Fisher's G."""
        if self.fisher_type == "true":
            src = out if self.generator.device.type == out.device.type else out.cpu()
            y = sample_targets(src, self.likelihood, self.generator)
            return [output_grads(src, y, self.likelihood).to(out.device)]
        if self.likelihood == "gaussian":  # exact: S = I
            K = out[0].numel()
            eye = torch.eye(K, dtype=out.dtype, device=out.device).reshape(K, *out.shape[1:])
            return [eye[k].expand_as(out).contiguous() for k in range(K)]
        S = output_hessian_sqrt(out, self.likelihood)  # (N, C, C)
        return [S[:, :, k].contiguous() for k in range(S.shape[-1])]

    def _update_factors(self, cot_grads: list[tuple], n_examples: int, step: int, decay: float) -> None:
        offset = 0
        for ly in self.layers:
            k = len(self._cap_out[ly.name])
            grads = [[g if g is not None else torch.zeros_like(o)
                      for g, o in zip(cg[offset:offset + k], self._cap_out[ly.name], strict=True)] for cg in cot_grads]
            offset += k
            if k == 0:
                continue
            A, G = ly.batch_factors(self._cap_in[ly.name], grads, n_examples)
            if not all_finite(A, G):
                self._record(step, "nonfinite_factor", ly.name, "factor update skipped")
                continue
            if ly.name in self._factors and decay > 0:
                A0, G0 = self._factors[ly.name]
                A, G = decay * A0 + (1 - decay) * A, decay * G0 + (1 - decay) * G
            self._factors[ly.name] = (A, G)

    def _update_eigen(self, step: int) -> None:
        for ly in self.layers:
            if ly.name not in self._factors:
                continue
            new = []
            for i, (which, M) in enumerate(zip("AG", self._factors[ly.name], strict=True)):
                r = robust_eigh(M)
                where = f"{ly.name}:{which}"
                if r.status == "fp64_retry":
                    self._record(step, "eigh_fp64_retry", where, r.message)
                if r.status != "failed":
                    new.append((r.evals, r.evecs))
                elif ly.name in self._eig:
                    self._record(step, "eigh_failed", where, f"{r.message}; kept the previous eigendecomposition")
                    new.append(self._eig[ly.name][i])
                else:
                    self._record(step, "eigh_failed", where, f"{r.message}; using diag({which}) instead")
                    new.append(diagonal_fallback(M))
            self._eig[ly.name] = (new[0], new[1])

    def _tangent(self, mats: Mats) -> dict[str, torch.Tensor]:
        return {pn: v for ly in self.layers for pn, v in zip(self._pnames[ly.name], ly.split(mats[ly.name]), strict=True)}

    def _compute_rho(self, inputs: torch.Tensor, targets: torch.Tensor, h0: float, predicted: float) -> float:
        r""":math:`\rho = (h(\theta+\delta) - h(\theta)) / (M(\delta) - M(0))`; NaN if M predicts no decrease."""
        with torch.no_grad():
            h1 = float(self._loss(self.model(inputs), targets)) + self._wd_term(self.param_groups[0]["weight_decay"])
        if not (predicted < 0 and math.isfinite(h1)):
            return math.nan
        return (h1 - h0) / predicted

    def _curvature_rows(self, n: int) -> torch.Tensor | None:
        """A fresh random subset of ``curvature_examples`` batch rows for the quadratic model (None: all)."""
        m = self.curvature_examples
        if m is None or m >= n:
            return None
        return torch.randperm(n, generator=self.generator, device=self.generator.device)[:m].sort().values.to(
            self._all_params[0].device)

    def _skip(self, step: int, kind: str, message: str) -> None:
        self._record(step, kind, None, message)
        self._cap_in, self._cap_out = {}, {}
        self.zero_grad()
        self.steps += 1

    # ------------------------------------------------------------------ step
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:  # type: ignore[override]
        """One K-FAC update on the batch ``(inputs, targets)``; returns the loss before it."""
        group = self.param_groups[0]
        lr, lam, mom, wd = (float(group[k]) for k in ("lr", "damping", "momentum", "weight_decay"))
        lam_eff = lam + wd
        t = self.steps
        do_factors = t % self.factor_update_steps == 0 or len(self._factors) < len(self.layers)
        need_model = self.adaptive_damping and self.lm.due(t + 1)
        need_jvps = self.step_size_rule == "quadratic" or need_model  # J v from this forward's graph
        self.zero_grad()
        self._cap_in = {ly.name: [] for ly in self.layers}
        self._cap_out = {ly.name: [] for ly in self.layers}
        self._capturing = do_factors or need_jvps
        try:
            out = self.model(inputs)
        finally:
            self._capturing = False
        loss = self._loss(out, targets)
        self.last_loss = loss_val = float(loss.detach())
        if not math.isfinite(loss_val):
            self._skip(t, "nonfinite_loss", "non-finite loss; no update")
            return loss_val
        h0 = loss_val + self._wd_term(wd)

        # gradients; for the true/exact Fisher first the backward passes of the sampled/columned cotangents
        outs = [o for ly in self.layers for o in self._cap_out[ly.name]]  # layer outputs, in layer order
        empirical = do_factors and self.fisher_type == "empirical"
        cot_grads: list[tuple] = []
        if do_factors and not empirical and outs:
            for cot in self._cotangents(out.detach()):
                cot_grads.append(torch.autograd.grad(out, outs, grad_outputs=cot, retain_graph=True, allow_unused=True))
        params = self._all_params
        grads = torch.autograd.grad(loss, params + (outs if empirical else []), allow_unused=True,
                                    retain_graph=need_jvps)
        for p, g in zip(params, grads, strict=False):
            p.grad = torch.zeros_like(p) if g is None else g
        if empirical:  # batch-mean loss -> per-example output gradients: times N
            cot_grads = [tuple(None if g is None else g * out.shape[0] for g in grads[len(params):])]
        if not all_finite(*(p.grad for p in params)):
            self._skip(t, "nonfinite_grad", "non-finite gradient; no update")
            return loss_val
        if do_factors:
            self._update_factors(cot_grads, out.shape[0], t, float(group["factor_decay"]))
        # every call of a preconditioned layer in this forward pass: (input, output, map), and its layer
        calls = [(x, s, ly.apply) for ly in self.layers
                 for x, s in zip(self._cap_in[ly.name], self._cap_out[ly.name], strict=True)]
        call_layer = [ly.name for ly in self.layers for _ in self._cap_in[ly.name]]
        self._cap_in, self._cap_out = {}, {}
        if t % self.inverse_update_steps == 0 or len(self._eig) < len(self._factors):
            self._update_eigen(t)

        # natural-gradient proposal Delta = -(damped K-FAC)^{-1} grad, per layer (out, in_dim)
        g = {ly.name: ly.grad_matrix(wd) for ly in self.layers}
        D = {n: -precondition(g[n], *self._eig[n], lam_eff, self.pi_damping) for n in g}
        use_mom = mom > 0 and bool(self._prev)
        predicted, nu = math.nan, None
        fout, rows = out.detach(), self._curvature_rows(out.shape[0])

        def jvps(directions: list[Mats]) -> list[torch.Tensor]:
            """J v on the curvature rows; the quadratic terms average over those examples."""
            tangents = [[d[name] for name in call_layer] for d in directions]
            mods = [self._modules_by_name[n] for n in call_layer]
            if rows is None:
                fast = sequential_jvps(self.model, out, calls, mods, tangents)
                return graph_jvps(out, calls, tangents) if fast is None else fast
            sub = [(x[rows], s, apply) for x, s, apply in calls]
            fast = sequential_jvps(self.model, out[rows], sub, mods, tangents)
            return [jv[rows] for jv in graph_jvps(out, calls, tangents)] if fast is None else fast

        if rows is not None:
            fout = fout[rows]

        if self.step_size_rule == "quadratic":
            jv = jvps([D, self._prev] if use_mom else [D])
            q = [ggn_inner(jv[0], jv[0], fout, self.likelihood) + lam_eff * _dot(D, D), _dot(g, D)]
            if use_mom:
                d0 = self._prev
                q += [ggn_inner(jv[0], jv[1], fout, self.likelihood) + lam_eff * _dot(D, d0),
                      ggn_inner(jv[1], jv[1], fout, self.likelihood) + lam_eff * _dot(d0, d0), _dot(g, d0)]
            q = torch.stack(q).tolist()
            alpha, mu = step_coefficients(*q)
            predicted = model_change(alpha, mu, *q)
            delta = {n: alpha * D[n] + mu * self._prev[n] if mu else alpha * D[n] for n in D}
        else:
            alpha = lr
            if self.step_size_rule == "kl_clip":
                vg = lr * lr * float(_dot(D, g).neg())
                nu = min(1.0, math.sqrt(group["kl_clip"] / vg)) if vg > 0 else 1.0
                alpha = lr * nu
            mu = mom if use_mom else 0.0
            delta = {n: alpha * D[n] + mu * self._prev[n] if mu else alpha * D[n] for n in D}
            if need_model:
                (jd,) = jvps([delta])
                q = torch.stack([_dot(g, delta), ggn_inner(jd, jd, fout, self.likelihood)
                                 + lam_eff * _dot(delta, delta)]).tolist()
                predicted = q[0] + 0.5 * q[1]
        step_norm = math.sqrt(float(_dot(delta, delta)))
        if not math.isfinite(step_norm):
            self._skip(t, "nonfinite_update", "non-finite update; no update")
            return loss_val

        with torch.no_grad():
            for ly in self.layers:
                for p, d in zip(ly.params, ly.split(delta[ly.name]), strict=True):
                    p.add_(d)
        if self.fallback is not None:
            self.fallback.step()
        self._prev = {n: d.detach() for n, d in delta.items()}
        self.last_alpha, self.last_mu, self.last_nu, self.last_step_norm = float(alpha), float(mu), nu, step_norm
        if need_model:
            self.last_rho = self._compute_rho(inputs, targets, h0, predicted)
            group["damping"] = self.lm.update(lam, self.last_rho)
        self.steps += 1
        return loss_val

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Everything needed to continue bitwise identically (see :mod:`natgrad.optim.kfac.state`)."""
        return kfac_state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        load_kfac_state(self, state)
