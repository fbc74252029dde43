"""Checkpoints of :class:`natgrad.optim.KFAC`.

The state holds the hyper-parameters of every param group (``param_groups[0]`` with the
current damping; ``param_groups[1]`` those of the fallback optimizer), the step counter and
the counts of rejected steps and bound hits, the running Kronecker factors (a low-rank one as
its weighted rows), their inverses (eigendecompositions, or Cholesky factors or Woodbury forms
of wide factors), the previous update (momentum),
the state of the label-sampling ``torch.Generator``, the event log, the last recorded
scalars and the fallback optimizer's ``state_dict``. Loading it into a fresh optimizer built
with the same arguments on a model holding the same weights continues training bitwise
identically on the CPU (tested). Tensors are copied in both directions and moved to each
layer's device and dtype on load.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from natgrad.optim.kfac.linalg import CholeskyFactor, LowRankFactor, WoodburyFactor

if TYPE_CHECKING:
    from natgrad.optim.kfac.optimizer import KFAC

VERSION = 5
LAST = ("loss", "rho", "alpha", "mu", "nu", "kl", "step_norm", "rejected", "bound")


def _c(x: torch.Tensor, **to) -> torch.Tensor:
    return x.detach().to(**to).clone()


def _rep_out(rep) -> dict:
    if isinstance(rep, CholeskyFactor | WoodburyFactor):
        d = {"upper": _c(rep.upper), "shift": rep.shift, "mean": _c(rep.mean)}
        return d | {"rows": _c(rep.rows)} if isinstance(rep, WoodburyFactor) else d
    return {"evals": _c(rep[0]), "evecs": _c(rep[1])}


def _rep_in(d: dict, **to):
    if "upper" in d:
        U, shift, mean = _c(d["upper"], **to), float(d["shift"]), _c(d["mean"], **to)
        return WoodburyFactor(_c(d["rows"], **to), U, shift, mean) if "rows" in d else CholeskyFactor(U, shift, mean)
    return (_c(d["evals"], **to), _c(d["evecs"], **to))


def _factor_out(X):
    if isinstance(X, LowRankFactor):
        return {"weights": list(X.weights), "rows": [_c(r) for r in X.rows]}
    return _c(X)


def _factor_in(X, **to):
    if isinstance(X, dict):
        return LowRankFactor(tuple(float(w) for w in X["weights"]), tuple(_c(r, **to) for r in X["rows"]))
    return _c(X, **to)


def kfac_state_dict(opt: KFAC) -> dict[str, Any]:
    return dict(
        version=VERSION,
        layers=[ly.name for ly in opt.layers],
        param_groups=[{k: v for k, v in grp.items() if k != "params"} for grp in opt.param_groups],
        steps=opt.steps, rejections=opt.rejections, bound_hits=opt.bound_hits, likelihood=opt.likelihood,
        factors={n: (_factor_out(A), _factor_out(G)) for n, (A, G) in opt._factors.items()},
        inverses={n: [_rep_out(r) for r in reps] for n, reps in opt._inv.items()},
        prev_update={n: _c(d) for n, d in opt._prev.items()},
        generator=opt.generator.get_state().clone(),
        events=opt.events.state_dict(),
        last={k: getattr(opt, f"last_{k}") for k in LAST},
        fallback=None if opt.fallback is None else copy.deepcopy(opt.fallback.state_dict()),
    )


def load_kfac_state(opt: KFAC, state: dict[str, Any]) -> None:
    names = [ly.name for ly in opt.layers]
    if state.get("version") != VERSION or state.get("layers") != names:
        raise ValueError(f"checkpoint (version {state.get('version')}) is for layers {state.get('layers')}, "
                         f"this optimizer has {names}")
    to = {ly.name: dict(device=ly.weight.device, dtype=ly.weight.dtype) for ly in opt.layers}
    for group, saved in zip(opt.param_groups, state["param_groups"], strict=False):
        group.update(saved)
    opt.steps, opt.rejections, opt.bound_hits = int(state["steps"]), int(state["rejections"]), int(state["bound_hits"])
    opt.likelihood = state["likelihood"]
    opt._factors = {n: (_factor_in(A, **to[n]), _factor_in(G, **to[n])) for n, (A, G) in state["factors"].items()}
    opt._inv = {n: [_rep_in(r, **to[n]) for r in reps] for n, reps in state["inverses"].items()}
    opt._prev = {n: _c(d, **to[n]) for n, d in state["prev_update"].items()}
    opt.events.load_state_dict(state["events"])
    try:
        opt.generator.set_state(state["generator"].cpu())
    except RuntimeError as exc:  # e.g. a CPU generator's state loaded into a CUDA generator
        opt._record(opt.steps, "rng_state_not_restored", None, str(exc))
    for k in LAST:
        setattr(opt, f"last_{k}", state["last"][k])
    if opt.fallback is not None and state.get("fallback") is not None:
        opt.fallback.load_state_dict(state["fallback"])
