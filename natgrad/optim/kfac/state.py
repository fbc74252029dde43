"""Checkpoints of :class:`natgrad.optim.KFAC`.

The state holds the hyper-parameters of ``param_groups[0]`` (including the
current damping), the step counter, the running Kronecker factors, their
eigendecompositions, the previous update (momentum), the state of the
label-sampling ``torch.Generator``, the event log, the last recorded scalars
and the fallback optimizer's ``state_dict``. Loading it into a fresh
optimizer built with the same arguments on a model holding the same weights
continues training bitwise identically on the CPU (tested). Tensors are
copied in both directions and moved to each layer's device and dtype on load.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from natgrad.optim.kfac.optimizer import KFAC

VERSION = 2


def _c(x: torch.Tensor, **to) -> torch.Tensor:
    return x.detach().to(**to).clone()


def kfac_state_dict(opt: KFAC) -> dict[str, Any]:
    return dict(
        version=VERSION,
        layers=[ly.name for ly in opt.layers],
        param_groups=[{k: v for k, v in grp.items() if k != "params"} for grp in opt.param_groups],
        steps=opt.steps,
        factors={n: (_c(A), _c(G)) for n, (A, G) in opt._factors.items()},
        eigen={n: ((_c(a), _c(Qa)), (_c(e), _c(Qg))) for n, ((a, Qa), (e, Qg)) in opt._eig.items()},
        prev_update={n: _c(d) for n, d in opt._prev.items()},
        generator=opt.generator.get_state().clone(),
        events=opt.events.state_dict(),
        last=dict(loss=opt.last_loss, rho=opt.last_rho, alpha=opt.last_alpha, mu=opt.last_mu, nu=opt.last_nu,
                  step_norm=opt.last_step_norm),
        fallback=None if opt.fallback is None else copy.deepcopy(opt.fallback.state_dict()),
    )


def load_kfac_state(opt: KFAC, state: dict[str, Any]) -> None:
    names = [ly.name for ly in opt.layers]
    if state.get("version") != VERSION or state.get("layers") != names:
        raise ValueError(f"checkpoint (version {state.get('version')}) is for layers {state.get('layers')}, "
                         f"this optimizer has {names}")
    to = {ly.name: dict(device=ly.weight.device, dtype=ly.weight.dtype) for ly in opt.layers}
    opt.param_groups[0].update(state["param_groups"][0])
    opt.steps = int(state["steps"])
    opt._factors = {n: (_c(A, **to[n]), _c(G, **to[n])) for n, (A, G) in state["factors"].items()}
    opt._eig = {n: ((_c(a, **to[n]), _c(Qa, **to[n])), (_c(e, **to[n]), _c(Qg, **to[n])))
                for n, ((a, Qa), (e, Qg)) in state["eigen"].items()}
    opt._prev = {n: _c(d, **to[n]) for n, d in state["prev_update"].items()}
    opt.events.load_state_dict(state["events"])
    try:
        opt.generator.set_state(state["generator"].cpu())
    except RuntimeError as exc:  # e.g. a CPU generator's state loaded into a CUDA generator
        opt._record(opt.steps, "rng_state_not_restored", None, str(exc))
    last = state["last"]
    opt.last_loss, opt.last_rho, opt.last_alpha = last["loss"], last["rho"], last["alpha"]
    opt.last_mu, opt.last_nu, opt.last_step_norm = last["mu"], last["nu"], last["step_norm"]
    if opt.fallback is not None and state.get("fallback") is not None:
        opt.fallback.load_state_dict(state["fallback"])
