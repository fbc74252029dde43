r"""A tree embedded in the Poincare disk (Nickel & Kiela 2017, arXiv 1705.08039).

Each node ``u`` of a tree (:mod:`natgrad.tasks.trees`) gets a point :math:`x_u` in the
open unit disk :math:`\mathbb{B}^2`, a ``geoopt.ManifoldParameter`` on geoopt's
``PoincareBall``. Distances are the Poincare distance

.. math::

    d(x, y) = \operatorname{arcosh}\Big(1 + \frac{2 \lVert x - y\rVert^2}{(1 - \lVert x\rVert^2)(1 - \lVert y\rVert^2)}\Big),

written out (not geoopt's clamped ``dist``) so that a point at or beyond the boundary
gives an undefined distance (NaN) instead of a silently clipped one. It is computed as
:math:`2 \operatorname{arsinh}\sqrt{r}` with :math:`r` the fraction above, the same number
with a finite slope for nearby points. The loss is Nickel
& Kiela's softmax ranking loss over the transitive closure :math:`\mathcal{D}` of "is a",
averaged over its pairs, with every negative example instead of a sample:

.. math::

    L = \frac{1}{|\mathcal{D}|} \sum_{(u, v) \in \mathcal{D}} \Big[ d(u, v)
        + \log \sum_{v' \in \mathcal{N}(u) \cup \{v\}} e^{-d(u, v')} \Big],

:math:`\mathcal{N}(u)` the nodes neither ``u`` nor an ancestor or descendant of ``u``.
Points start uniform in :math:`[-10^{-3}, 10^{-3}]^2` (as in the paper). Everything is
deterministic for a given seed: there is no sampling.
"""

from __future__ import annotations

import geoopt
import numpy as np
import torch
from torch import nn

from natgrad.tasks.base import ObjectiveTask
from natgrad.tasks.trees import Tree, balanced_tree, taxonomy

__all__ = ["PoincareEmbedding", "make_tree_option", "mean_rank", "poincare_distances", "poincare_tree_task"]

INIT = 1e-3


def poincare_distances(x: torch.Tensor) -> torch.Tensor:
    """(n, n) Poincare distances between the rows of ``x`` (n, d); 0 on the diagonal with a finite gradient;
    NaN for pairs with one point on or outside the unit sphere."""
    sq = (x * x).sum(dim=-1)  # (n,)
    diff = ((x[:, None, :] - x[None, :, :]) ** 2).sum(dim=-1)  # (n, n)
    ratio = diff / ((1.0 - sq)[:, None] * (1.0 - sq)[None, :])  # negative when exactly one point is outside
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    # arcosh(1 + 2 r) = 2 asinh(sqrt(r)): the same number without arcosh's infinite slope at 1, which float32
    # reaches for nearby points. sqrt'(0) is infinite too: keep the diagonal out of it.
    d = 2.0 * torch.asinh(torch.sqrt(torch.where(eye, torch.ones_like(ratio), ratio)))
    return torch.where(eye, torch.zeros_like(d), d)


class PoincareEmbedding(nn.Module):
    """The embedding loss of the module docstring; ``forward()`` returns it."""

    def __init__(self, tree: Tree, x0: torch.Tensor, ball: geoopt.Manifold):
        super().__init__()
        self.tree = tree
        if tree.size < 2:
            raise ValueError("a tree to embed needs at least two nodes")
        pairs = torch.tensor(tree.closure(), dtype=torch.long)  # (P, 2) (child, ancestor)
        allowed = ~torch.tensor(tree.related)[pairs[:, 0]]  # (P, n) the negatives of each pair's child ...
        allowed[torch.arange(len(pairs)), pairs[:, 1]] = True  # ... and the pair's own ancestor
        self.register_buffer("u", pairs[:, 0])
        self.register_buffer("v", pairs[:, 1])
        self.register_buffer("allowed", allowed)
        self.x = geoopt.ManifoldParameter(x0, manifold=ball)  # (n, 2)

    def forward(self, *ignored) -> torch.Tensor:
        d = poincare_distances(self.x)
        logits = (-d[self.u]).masked_fill(~self.allowed, -torch.inf)  # (P, n)
        return (d[self.u, self.v] + torch.logsumexp(logits, dim=1)).mean()

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        norms = self.x.norm(dim=-1)
        out = {"max norm": float(norms.max()), "outside": float((norms >= 1).sum())}
        for i, (a, b) in enumerate(self.x.tolist()):
            out[f"x{i}"], out[f"y{i}"] = a, b
        return out


def mean_rank(tree: Tree, x: np.ndarray | torch.Tensor) -> float:
    """Nickel & Kiela's reconstruction mean rank: for each (child, ancestor) pair, 1 + the number of the child's
    negatives closer to it than the ancestor, averaged (1 is perfect). NaN when a distance is undefined."""
    d = poincare_distances(torch.as_tensor(np.asarray(x), dtype=torch.float64)).numpy()
    ranks = []
    for u, v in tree.closure():
        neg = ~tree.related[u]
        ranks.append(1 + int((d[u, neg] < d[u, v]).sum()) if np.isfinite(d[u]).all() else np.nan)
    return float(np.mean(ranks))


def make_tree_option(tree: str = "taxonomy", branching: int = 3, depth: int = 3) -> Tree:
    if tree == "taxonomy":
        return taxonomy()
    if tree == "balanced":
        return balanced_tree(branching, depth)
    raise ValueError(f"tree must be 'taxonomy' or 'balanced', got {tree!r}")


def poincare_tree_task(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                       tree: str = "taxonomy", branching: int = 3, depth: int = 3) -> ObjectiveTask:
    """Embed the taxonomy or a balanced tree (``branching``, ``depth``) in the Poincare disk."""
    t = make_tree_option(tree, branching, depth)
    g = torch.Generator().manual_seed(seed)
    x0 = (2.0 * torch.rand(t.size, 2, generator=g, dtype=torch.float64) - 1.0) * INIT
    ball = geoopt.PoincareBall().to(device=device, dtype=dtype)
    return ObjectiveTask(PoincareEmbedding(t, x0.to(dtype), ball).to(device))
