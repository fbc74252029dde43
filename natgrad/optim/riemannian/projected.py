r"""Euclidean optimizers that put every manifold parameter back on its manifold after each step.

The baseline against which Riemannian optimizers are compared ("Adam, then
re-orthonormalise"). For a ``geoopt.ManifoldParameter`` :math:`x` on manifold
:math:`\mathcal{M}` the update is

.. math::

    x_{t+1} = \Pi_{\mathcal{M}}\big(x_t + \Delta_t\big),

where :math:`\Delta_t` is the ordinary Euclidean step of Adam (Kingma & Ba 2015,
arXiv 1412.6980) or SGD with momentum, computed from the Euclidean gradient, and
:math:`\Pi_{\mathcal{M}}` is the manifold's ``projx``: the polar factor
:math:`UV^\top` of an SVD on the Stiefel manifold (the nearest orthonormal matrix),
a clip to norm :math:`1-\epsilon` in the Poincare ball (the projection of Nickel &
Kiela 2017, arXiv 1705.08039), the Euclidean projection onto the simplex for
:class:`~natgrad.optim.riemannian.simplex.ProbabilitySimplex`. Plain parameters are
updated as by the Euclidean optimizer. Unlike Riemannian SGD/Adam (Bonnabel 2013,
arXiv 1111.5280; Becigneul & Ganea 2019, arXiv 1810.00760) the step ignores the
metric: the same Euclidean length is a long way near the Poincare boundary and the
projection may undo most of it.
"""

from __future__ import annotations

import geoopt
import torch

__all__ = ["ProjectedAdam", "ProjectedSGD"]


class _ProjectAfterStep:
    @torch.no_grad()
    def project(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if isinstance(p, geoopt.ManifoldParameter | geoopt.ManifoldTensor):
                    p.copy_(p.manifold.projx(p))

    def step(self, closure=None):
        loss = super().step(closure)
        self.project()
        return loss


class ProjectedAdam(_ProjectAfterStep, torch.optim.Adam):
    r"""``torch.optim.Adam``, then :math:`x \leftarrow \Pi_{\mathcal{M}}(x)` for every manifold parameter (module docstring)."""


class ProjectedSGD(_ProjectAfterStep, torch.optim.SGD):
    r"""``torch.optim.SGD``, then :math:`x \leftarrow \Pi_{\mathcal{M}}(x)` for every manifold parameter (module docstring).

    With ``momentum=0`` this is projected gradient descent, :math:`x \leftarrow \Pi(x - \eta \nabla f(x))`."""
