"""The pieces of a K-FAC update, as methods of :class:`natgrad.optim.kfac.KFAC`: the running
factors from the captured passes, their damped inverses on two schedules, the proposal,
the :math:`Jv` products of the quadratic model, and applying or undoing an update.

The algorithm and its references are in the docstrings of :class:`~natgrad.optim.kfac.KFAC`,
:mod:`~natgrad.optim.kfac.linalg` (inverses of wide factors), :mod:`~natgrad.optim.kfac.quadratic`
(the three ways to get :math:`Jv`) and :mod:`~natgrad.optim.kfac.capture` (the hooks).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from natgrad.curvature.likelihoods import output_grads, output_hessian_sqrt, sample_targets
from natgrad.optim.kfac.capture import Record, forward_with_calls, preserved_buffers
from natgrad.optim.kfac.linalg import (
    CholeskyFactor,
    LowRankFactor,
    WoodburyFactor,
    dense_factor,
    diagonal_fallback,
    factor_shifts,
    factor_trace_mean,
    precondition,
    robust_cholesky,
    running_factor,
)
from natgrad.optim.kfac.quadratic import ggn_inner, graph_jvps, sequential_jvps, sequential_supported
from natgrad.optim.kfac.safeguard import ModelTerms, StepChoice, choose_step
from natgrad.optim.linalg import all_finite, robust_eigh


def make_fallback(fallback, rest, kwargs) -> torch.optim.Optimizer | None:
    """The optimizer of the parameters K-FAC does not precondition (None when there are none)."""
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


class UpdateMixin:
    """Methods of :class:`~natgrad.optim.kfac.KFAC` (which holds the attributes they use)."""

    # ------------------------------------------------------------------ inputs and extra passes
    def _check_inputs(self, x: Any) -> None:
        w = self.layers[0].weight
        if not isinstance(x, torch.Tensor):
            return
        if x.is_floating_point() and x.dtype != w.dtype:
            raise ValueError(f"the inputs are {x.dtype} but the model's weights are {w.dtype}: convert one of them "
                             f"(x.to({w.dtype}) or model.to({x.dtype}))")
        if x.device != w.device:
            raise ValueError(f"the inputs are on {x.device} but the model is on {w.device}: move one of them")

    def _quietly(self, fn):
        """``fn()`` without gradients, without recording, with the model's buffers restored after."""
        with torch.no_grad(), self.capture.paused(), preserved_buffers(self.model):
            return fn()

    def _call_modules(self, rec: Record, names: set[str] | None = None) -> list:
        return [ly.module for ly in self.layers if ly.name in rec.calls and (names is None or ly.name in names)
                for _ in rec.calls[ly.name]]

    def _needs_graph(self, records: list[Record]) -> bool:
        """Whether the quadratic model will need the autograd graph of this step's forward pass."""
        need = self.step_size_rule == "quadratic" or (self.adaptive_damping and self.lm.due(self.steps + 1))
        return bool(records) and need and not sequential_supported(self.model, self._call_modules(records[-1]))

    # ------------------------------------------------------------------ the Fisher's output gradients
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

    def _on_backward(self, rec: Record) -> None:
        """During the backward pass through ``rec``'s output: the sampled (or exact) targets'
        gradients at every layer output, on factor-update steps (the true Fisher's G)."""
        due = self._factors_due(rec.calls)
        if self.fisher_type == "empirical" or self.likelihood == "auto" or not any(g for _, g in due.values()):
            return
        names = [ly.name for ly in self.layers if ly.name in rec.calls]
        outs = rec.outputs(names)
        if not all(s.requires_grad for s in outs):
            return
        for cot in self._cotangents(rec.out.detach()):
            grads = torch.autograd.grad(rec.out, outs, grad_outputs=cot, retain_graph=True, allow_unused=True)
            it = iter(grads)
            rec.cot_grads.append({n: [next(it) for _ in rec.calls[n]] for n in names})

    # ------------------------------------------------------------------ factors and inverses
    def _wide(self, dim: int) -> bool:
        return self.pi_damping and dim > self.wide_factor_dim

    def _factor_interval(self, dim: int) -> int:
        return self.wide_update_steps if self._wide(dim) else self.factor_update_steps

    def _factors_due(self, called) -> dict[str, tuple[bool, bool]]:
        """``{layer: (A due, G due)}`` for the called layers with a factor to refresh this step:
        every ``factor_update_steps``, wide factors every ``wide_update_steps``, missing ones now."""
        due = {}
        for ly in self.layers:
            if ly.name in called:
                new = ly.name not in self._factors
                flags = tuple(new or self.steps % self._factor_interval(d) == 0 for d in (ly.in_dim, ly.out_dim))
                if any(flags):
                    due[ly.name] = flags
        return due

    def _refresh_factors(self, records: list[Record], t: int, decay: float) -> None:
        r"""Running averages :math:`\beta^k F + (1-\beta^k) F_{\text{batch}}` of the due factors, for a
        factor refreshed every :math:`k` steps (``factor_decay`` :math:`\beta` is per step, so the
        memory in steps, about :math:`1/(1-\beta)`, does not depend on the schedule)."""
        due = self._factors_due({n for r in records for n in r.calls})
        for ly in self.layers:
            n = ly.name
            recs = [r for r in records if n in r.calls]
            if n not in due or not recs:
                continue
            old = self._factors.get(n)
            inputs = [a for r in recs for a, _ in r.calls[n]]
            A = self._batch_factor(old and old[0], ly.in_dim, ly.input_rows, ly.input_factor,
                                   inputs) if due[n][0] else None
            G = None
            if due[n][1]:
                if self.fisher_type == "empirical":  # the batch-mean loss's own gradients, times N
                    cots = [[torch.zeros_like(s) if g is None else g * r.examples for r in recs
                             for (_, s), g in zip(r.calls[n], r.loss_grads.get(n, [None] * len(r.calls[n])),
                                                  strict=True)]]
                elif all(r.cot_grads for r in recs):
                    cots = [[torch.zeros_like(s) if g is None else g
                             for r in recs for (_, s), g in zip(r.calls[n], r.cot_grads[k][n], strict=True)]
                            for k in range(len(recs[0].cot_grads))]
                else:
                    cots = None
                examples = sum(r.examples for r in recs)
                G = None if cots is None else self._batch_factor(
                    old and old[1], ly.out_dim, ly.output_rows, ly.output_factor, cots, examples)
            if old is None and (A is None or G is None):
                continue
            if not all_finite(*(X.rows[-1] if isinstance(X, LowRankFactor) else X for X in (A, G) if X is not None)):
                self._record(t, "nonfinite_factor", n, "factor update skipped")
                continue
            new, dims = [], (ly.in_dim, ly.out_dim)
            for X, X0 in zip((A, G), old or (None, None), strict=True):
                if X is None:
                    X = X0
                elif X0 is not None and decay > 0:  # b * old + (1 - b) * new, b = decay^interval
                    X = running_factor(X0, X, decay ** self._factor_interval(dims[len(new)]))
                new.append(X)
            self._factors[n] = (new[0], new[1])

    def _batch_factor(self, old, dim: int, rows, dense, *args):
        """This batch's factor: its rows (a :class:`LowRankFactor`) for a wide factor not yet dense
        whose batch has at most ``dim / 2`` rows, else the matrix (``rows(*args)``, ``dense(*args)``)."""
        if self._wide(dim) and not isinstance(old, torch.Tensor):
            R = rows(*args)
            return LowRankFactor((1.0,), (R,)) if R.shape[0] <= dim // 2 else R.T @ R
        return dense(*args)

    def _refresh_inverses(self, t: int, lam: float) -> None:
        """Eigendecompositions every ``inverse_update_steps``; factors wider than
        ``wide_factor_dim`` (with pi-damping) every ``wide_update_steps``, as Cholesky factors, or as
        Woodbury forms when kept low-rank (:mod:`natgrad.optim.kfac.linalg`)."""
        for ly in self.layers:
            if ly.name not in self._factors:
                continue
            mats = self._factors[ly.name]
            reps = self._inv.setdefault(ly.name, [None, None])
            for i, (which, M, dim) in enumerate(zip("AG", mats, (ly.in_dim, ly.out_dim), strict=True)):
                wide = self._wide(dim)
                if reps[i] is not None and t % (self.wide_update_steps if wide else self.inverse_update_steps):
                    continue
                where = f"{ly.name}:{which}"
                if wide:
                    means = [factor_trace_mean(X) for X in mats]
                    shift = factor_shifts(means[0], means[1], lam)[i]
                    Y = M.stacked() if isinstance(M, LowRankFactor) else None
                    U, message = robust_cholesky(M if Y is None else Y @ Y.T, shift)
                    if message:
                        self._record(t, "cholesky_fp64_retry" if U is not None else "cholesky_failed", where,
                                     message if U is not None else f"{message}; kept the previous factor")
                    if U is not None:
                        reps[i] = CholeskyFactor(U, shift, means[i]) if Y is None else WoodburyFactor(
                            Y, U, shift, means[i])
                    elif reps[i] is None:
                        reps[i] = diagonal_fallback(dense_factor(M))
                    continue
                r = robust_eigh(M)
                if r.status == "fp64_retry":
                    self._record(t, "eigh_fp64_retry", where, r.message)
                if r.status != "failed":
                    reps[i] = (r.evals, r.evecs)
                elif reps[i] is not None:
                    self._record(t, "eigh_failed", where, f"{r.message}; kept the previous eigendecomposition")
                else:
                    self._record(t, "eigh_failed", where, f"{r.message}; using diag({which}) instead")
                    reps[i] = diagonal_fallback(M)

    def _proposal(self, g: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
        r""":math:`\Delta = -(\text{damped K-FAC})^{-1}\nabla h` per layer (out, in_dim)."""
        return {n: -precondition(g[n], *self._inv[n], lam, self.pi_damping) for n in g}

    # ------------------------------------------------------------------ J v for the quadratic model
    def _curvature_rows(self, n: int) -> torch.Tensor | None:
        """A fresh random subset of ``curvature_examples`` batch rows for the quadratic model (None: all)."""
        m = self.curvature_examples
        if m is None or m >= n:
            return None
        return torch.randperm(n, generator=self.generator, device=self.generator.device)[:m].sort().values.to(
            self.layers[0].weight.device)

    def _jvps(self, records: list[Record], layers: list, directions: list[dict[str, torch.Tensor]],
              graph_alive: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:math:`Jv` of every direction on the curvature rows of every pass, and the outputs
        there: forward mode through the captured activations when the model is a plain
        Sequential, else the step's own graph (double backward), else (an ordinary loop, whose
        backward freed the graph) the double backward of a fresh forward pass."""
        first = records[0].args[0] if records[0].args else None
        one_batch = len(records) == 1 and isinstance(first, torch.Tensor) and first.shape[0] == records[0].examples
        rows = self._curvature_rows(records[0].examples) if one_batch else None
        names = {ly.name for ly in layers}
        result: list[list[torch.Tensor]] = [[] for _ in directions]
        fouts = []
        for rec in records:
            order = [ly for ly in self.layers if ly.name in names and ly.name in rec.calls]
            calls = [(x, s, ly.apply) for ly in order for x, s in rec.calls[ly.name]]
            mods = [ly.module for ly in order for _ in rec.calls[ly.name]]
            tangents = [[d[ly.name] for ly in order for _ in rec.calls[ly.name]] for d in directions]
            out = rec.out.detach()
            fout = out if rows is None else out[rows]
            if sequential_supported(self.model, mods):
                sub = calls if rows is None else [(x[rows], s[rows], a) for x, s, a in calls]
                jv = sequential_jvps(self.model, out, sub, mods, tangents)
            elif graph_alive:
                jv = graph_jvps(rec.out, calls, tangents)
                jv = jv if rows is None else [j[rows] for j in jv]
            else:  # the graph is gone (ordinary loop): a fresh forward pass, buffers restored
                args = rec.args if rows is None else (rec.args[0][rows], *rec.args[1:])
                with self.capture.paused(), preserved_buffers(self.model):
                    fresh, fresh_calls = forward_with_calls(self.model, {ly.name: ly.module for ly in order},
                                                            tuple(args), rec.kwargs)
                    calls = [(x, s, ly.apply) for ly in order for x, s in fresh_calls.get(ly.name, [])]
                    jv = graph_jvps(fresh, calls, tangents)
                fout = fresh.detach()
            for k, j in enumerate(jv):
                result[k].append(j)
            fouts.append(fout)
        return [torch.cat(r) for r in result], torch.cat(fouts)

    # ------------------------------------------------------------------ the step size
    def _choose(self, records, layers, g, D, prev, lam, lr, mom, need_model, graph_alive
                ) -> tuple[StepChoice, dict[str, torch.Tensor]]:
        """The step: (coefficients and model values, per-layer update)."""
        if self.step_size_rule == "quadratic":
            jv, fout = self._jvps(records, layers, [D, prev] if prev else [D], graph_alive)
            terms = self._terms(jv, fout, g, D, prev)
            c = choose_step(terms, lam, lr=lr, max_momentum=self.max_momentum, max_kl=self.max_kl)
        else:
            alpha, nu = lr, 1.0
            if self.step_size_rule == "kl_clip":
                vg = lr * lr * -sum(float((D[n] * g[n]).sum()) for n in D)
                nu = min(1.0, math.sqrt(float(self.param_groups[0]["kl_clip"]) / vg)) if vg > 0 else 1.0
                alpha = lr * nu
            mu = mom if prev else 0.0
            c = StepChoice(alpha, mu, math.nan, math.nan, nu)
            if need_model:
                delta = {n: alpha * D[n] + mu * prev[n] if mu else alpha * D[n] for n in D}
                jv, fout = self._jvps(records, layers, [delta], graph_alive)
                terms = self._terms(jv, fout, g, delta, {})
                c = StepChoice(alpha, mu, terms.change(1.0, 0.0, lam), terms.kl(1.0, 0.0), nu)
        delta = {n: c.alpha * D[n] + c.mu * prev[n] if c.mu else c.alpha * D[n] for n in D}
        return c, delta

    def _terms(self, jv, fout, g, D, prev) -> ModelTerms:
        def dot(X, Y):
            return sum((X[n] * Y[n]).sum() for n in X)

        F_ = lambda a, b: ggn_inner(a, b, fout, self.likelihood)  # noqa: E731
        vals = [F_(jv[0], jv[0]), dot(D, D), dot(g, D)]
        if prev:
            vals += [F_(jv[0], jv[1]), dot(D, prev), F_(jv[1], jv[1]), dot(prev, prev), dot(g, prev)]
        vals = torch.stack([torch.as_tensor(v) for v in vals]).tolist()
        return ModelTerms(*vals, momentum=bool(prev))

    # ------------------------------------------------------------------ applying an update
    @staticmethod
    def _apply(layers: list, delta: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for ly in layers:
                for p, d in zip(ly.params, ly.split(delta[ly.name]), strict=True):
                    p.add_(d)

    @staticmethod
    def _restore(layers: list, saved: dict[str, list[torch.Tensor]]) -> None:
        with torch.no_grad():
            for ly in layers:
                for p, v in zip(ly.params, saved[ly.name], strict=True):
                    p.copy_(v)

    def _sync_fallback(self) -> None:
        """Copy the hyper-parameters of ``param_groups[1:]`` (where schedulers write) into the fallback."""
        for ours, theirs in zip(self.param_groups[1:], self.fallback.param_groups, strict=False):
            for k in theirs:
                if k != "params" and k in ours:
                    theirs[k] = ours[k]
