r"""Riemannian SGD (Bonnabel 2013, arXiv 1111.5280) with momentum that starts from the Riemannian gradient.

geoopt 0.5.1's ``RiemannianSGD`` creates its momentum buffer from the raw ``p.grad``, the *Euclidean*
gradient, and then adds the Riemannian one, so its first step moves along
:math:`\mu\, g_{\text{Euclidean}} + (1 - d)\operatorname{grad} f`. That vector need not be tangent, and
its size can be unrelated to the natural gradient's. On the Fisher-Rao simplex
(:mod:`~natgrad.optim.riemannian.simplex`) the Euclidean gradient of a cross-entropy is
:math:`-q/p`, against a natural gradient of :math:`p - q`: from a start with a coordinate near 0,
the first step threw the point to a corner it never left. Even on flat space that first step is
:math:`(1 + \mu)` times too long. Here the buffer starts as ``torch.optim.SGD``'s does: its first value is the
(Riemannian) gradient itself, so on a Euclidean parameter this optimizer takes exactly
``torch.optim.SGD``'s steps, and on a manifold every step is built from Riemannian gradients only.
Everything else (retraction, vector transport of the buffer, ``stabilize``) is geoopt's.
"""

from __future__ import annotations

import geoopt
import torch
from geoopt import ManifoldParameter, ManifoldTensor

from natgrad.optim.stepping import begin_step

__all__ = ["RiemannianSGD"]


class RiemannianSGD(geoopt.optim.RiemannianSGD):
    """``geoopt.optim.RiemannianSGD`` whose momentum buffer starts from the Riemannian gradient
    (module docstring); same arguments. Unlike geoopt's, its step leaves ``p.grad`` as it found it, as
    ``torch.optim.SGD`` does."""

    @torch.no_grad()
    def step(self, closure=None):
        loss, work = begin_step(self, closure, real=False, dense=False)  # as torch.optim.SGD
        for group, params in work:
            momentum, dampening, weight_decay = group["momentum"], group["dampening"], group["weight_decay"]
            if momentum <= 0:
                continue
            for p in params:
                if p.grad.is_sparse or self.state[p]:
                    continue
                manifold = p.manifold if isinstance(p, ManifoldParameter | ManifoldTensor) else self._default_manifold
                rgrad = manifold.egrad2rgrad(p, p.grad + weight_decay * p)
                # geoopt then sets buffer <- momentum * buffer + (1 - dampening) * rgrad: this start makes it rgrad
                self.state[p]["momentum_buffer"] = rgrad * (dampening / momentum)
        # geoopt adds the weight decay and the Nesterov term into p.grad itself; torch.optim.SGD leaves .grad as
        # backward() made it (a caller may log it, clip it or accumulate into it): geoopt gets a copy to change
        kept = [(p, p.grad) for group, params in work if group["weight_decay"] or group["nesterov"] for p in params]
        for p, g in kept:
            p.grad = g.clone()
        try:
            super().step()
        finally:
            for p, g in kept:
                p.grad = g
        return loss
