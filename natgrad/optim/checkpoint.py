"""Checkpoints of optimizers whose state holds tensors of their own dtype.

``torch.optim.Optimizer.load_state_dict`` casts floating-point state to the
parameter's dtype; Shampoo's and SOAP's statistics may be float64 for float32
parameters (``preconditioner_dtype``), and their counters and
:class:`~natgrad.optim.linalg.EventLog` live outside ``state``. These two
functions save and restore both, so a resumed run is bitwise the same as one
never stopped.
"""

from __future__ import annotations

from itertools import chain

import torch

from natgrad.optim.shampoo.blocks import copy_to


def state_dict_with(opt: torch.optim.Optimizer, key: str, counters: tuple[str, ...]) -> dict:
    """``opt.state_dict()`` plus ``{key: {counter: value, ..., "events": log}}``."""
    sd = torch.optim.Optimizer.state_dict(opt)
    sd[key] = {k: getattr(opt, k) for k in counters} | {"events": opt.events.state_dict()}
    return sd


def load_state_dict_keeping_dtypes(opt: torch.optim.Optimizer, state_dict: dict, key: str) -> None:
    """Load what :func:`state_dict_with` saved: every state tensor keeps its dtype and
    moves to its parameter's device (copied); counters and events are restored."""
    saved = state_dict["state"]
    torch.optim.Optimizer.load_state_dict(
        opt, {k: v for k, v in state_dict.items() if k not in ("state", key)} | {"state": {}})
    ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in opt.param_groups)
    for pid, p in zip(ids, params, strict=True):
        if pid in saved:
            opt.state[p] = copy_to(saved[pid], p.device)
    for k, v in state_dict.get(key, {}).items():
        if k == "events":
            opt.events.load_state_dict(v)
        else:
            setattr(opt, k, v)
