r"""Graft steps for Shampoo, computed exactly as torch.optim computes them.

Grafting (Agarwal, Anil, Hazan, Koren & Zhang 2020, arXiv 2002.11803) takes
the *direction* of one optimizer and the *per-layer step size* of another.
Shampoo uses the graft's step :math:`A_t = \hat m_t / d_t` for its norm:

========== ===================================================================
graft      :math:`d_t` (elementwise; :math:`\epsilon_g` added after the root)
========== ===================================================================
sgd, None  :math:`1`
adagrad    :math:`\sqrt{v_t} + \epsilon_g`, :math:`v_t = v_{t-1} + g_t^2`
rmsprop    :math:`\sqrt{v_t} + \epsilon_g`, :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`
adam       :math:`\sqrt{v_t / (1-\beta_2^t)} + \epsilon_g`, same :math:`v_t` as rmsprop
========== ===================================================================

The operations and their order are those of the single-tensor loops of
``torch.optim.Adagrad``/``RMSprop``/``Adam`` (torch 2.13), so before
preconditioning starts Shampoo reproduces them bit for bit.
"""

from __future__ import annotations

import torch

GRAFTS = ("sgd", "adagrad", "rmsprop", "adam", None)


def graft_denominators(kind: str | None, beta2: float, eps: float, second_moments: list,
                       grads: list[torch.Tensor], steps: list[int]) -> list[torch.Tensor] | None:
    """Update the second moments ``v`` in place and return the denominators
    :math:`d_t` (None for ``"sgd"``/None). ``steps``: each parameter's ``t``."""
    if kind in (None, "sgd"):
        return None
    if kind != "adagrad":
        torch._foreach_mul_(second_moments, beta2)
    torch._foreach_addcmul_(second_moments, grads, grads, value=1 if kind == "adagrad" else 1 - beta2)
    dens = torch._foreach_sqrt(second_moments)
    if kind == "adam":
        torch._foreach_div_(dens, [(1 - beta2**t) ** 0.5 for t in steps])  # as torch: sqrt(v) / sqrt(bc2)
    torch._foreach_add_(dens, eps)
    return dens


def nonfinite_flags(grads: list[torch.Tensor]) -> torch.Tensor:
    """Bool CPU tensor (len(grads),): whether each gradient holds a NaN or inf.

    Fast path when all gradients share a device and dtype: the fused check
    ``GradScaler`` uses (``inv_scale = 1`` multiplies them by one, which
    changes no bit); the per-tensor check runs only when it finds something.
    """
    if all(g.device == grads[0].device and g.dtype == grads[0].dtype for g in grads):
        try:
            found = torch.zeros((), dtype=torch.float32, device=grads[0].device)
            one = torch.ones((), dtype=torch.float32, device=grads[0].device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
            if not bool(found):
                return torch.zeros(len(grads), dtype=torch.bool)
        except (RuntimeError, NotImplementedError):
            pass
    return torch.stack([~torch.isfinite(g).all() for g in grads]).cpu()
