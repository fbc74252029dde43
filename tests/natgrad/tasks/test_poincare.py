"""The Poincare tree embedding: trees, distances against geoopt's PoincareBall.dist, the loss against a
hand computation, the mean rank, and plain Adam's failure reproduced exactly."""

from __future__ import annotations

import math

import geoopt
import numpy as np
import pytest
import torch

from natgrad.experiments import Spec, make_task, run
from natgrad.tasks.poincare import PoincareEmbedding, mean_rank, poincare_distances
from natgrad.tasks.trees import TAXONOMY, balanced_tree, make_tree, taxonomy

CPU = torch.device("cpu")


def test_trees():
    t = taxonomy()
    assert t.size == len(TAXONOMY) == 40 and t.names[t.parent.index(-1)] == "animal"
    assert len(t.closure()) == sum(t.depth(i) for i in range(t.size))
    assert ("dog", "animal") in [(t.names[a], t.names[b]) for a, b in t.closure()]
    assert (t.related == t.related.T).all() and not t.related[t.names.index("dog"), t.names.index("cat")]
    b = balanced_tree(3, 3)
    assert b.size == 1 + 3 + 9 + 27 and len(b.closure()) == 3 * 1 + 9 * 2 + 27 * 3 and len(b.edges()) == 39
    with pytest.raises(ValueError, match="cycle"):
        make_tree({"a": None, "b": "c", "c": "b"})
    with pytest.raises(ValueError, match="not nodes"):
        make_tree({"a": None, "b": "z"})
    with pytest.raises(ValueError):
        make_task("poincare-tree", 0, CPU, torch.float32, {"tree": "forest"})
    with pytest.raises(ValueError, match="at least two nodes"):
        make_task("poincare-tree", 0, CPU, torch.float32, {"tree": "balanced", "depth": 0})


def test_distances_are_geoopts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, generator=g, dtype=torch.float64)
    x = 0.95 * torch.tanh(x.norm(dim=1, keepdim=True)) * x / x.norm(dim=1, keepdim=True)
    ball = geoopt.PoincareBall()
    ref = ball.dist(x[:, None, :], x[None, :, :])
    torch.testing.assert_close(poincare_distances(x), ref.fill_diagonal_(0), atol=1e-9, rtol=1e-9)
    # nearby points in float32: finite gradients (arcosh'(1) is infinite; the arsinh form is not)
    y = (1e-4 * torch.rand(5, 2, generator=g)).requires_grad_()
    poincare_distances(y).sum().backward()
    assert torch.isfinite(y.grad).all()
    outside = torch.tensor([[0.0, 0.0], [1.01, 0.0], [0.2, 0.1]], dtype=torch.float64)
    d = poincare_distances(outside)
    assert math.isnan(d[0, 1]) and math.isnan(d[1, 2]) and math.isfinite(d[0, 2])


def test_loss_is_nickel_and_kielas_by_hand():
    """root r with children a, b and a's child c: pairs (a,r), (b,r), (c,a), (c,r); negatives of a: {b};
    of b: {a, c}; of c: {b}."""
    tree = make_tree({"r": None, "a": "r", "b": "r", "c": "a"})
    model = PoincareEmbedding(tree, torch.tensor([[0.0, 0.0], [0.3, 0.1], [-0.2, 0.4], [0.6, 0.2]],
                                                dtype=torch.float64), geoopt.PoincareBall())
    d = geoopt.PoincareBall().dist(model.x[:, None], model.x[None]).detach().numpy()
    r, a, b, c = range(4)

    def term(u, v, negatives):
        return d[u, v] + np.log(np.exp(-d[u, v]) + sum(np.exp(-d[u, n]) for n in negatives))

    expected = np.mean([term(a, r, [b]), term(b, r, [a, c]), term(c, a, [b]), term(c, r, [b])])
    assert float(model().detach()) == pytest.approx(expected, rel=1e-10)


def test_mean_rank():
    tree = make_tree({"r": None, "a": "r", "b": "r"})
    good = np.array([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0]])
    assert mean_rank(tree, good) == 1.0
    bad = np.array([[-0.9, 0.0], [0.5, 0.0], [0.45, 0.01]])  # a and b closer to each other than to r
    assert mean_rank(tree, bad) == 2.0


PLAIN_ADAM = Spec.make({"lr": 0.01, "on_manifold": "warn"}, {"tree": "taxonomy"}, task="poincare-tree",
                       optimizer="adam", steps=300)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_plain_adam_leaves_the_disk_at_the_same_step_every_time():
    first, second = run(PLAIN_ADAM), run(PLAIN_ADAM)
    assert first.status == second.status == "diverged"
    assert first.step == second.step
    np.testing.assert_array_equal(first.extras["max norm"], second.extras["max norm"])  # NaN == NaN here
    assert first.loss[:-1] == second.loss[:-1] and math.isnan(first.loss[-1]) and math.isnan(second.loss[-1])
    norms = first.extras["max norm"]
    left = next(i for i, v in enumerate(norms) if v >= 1)
    # the update of step `left` moves a node to norm >= 1; the loss before the next update is undefined
    assert all(v < 1 for v in norms[:left]) and first.extras["outside"][left] >= 1
    assert first.step[-1] == left + 1 and f"Diverged at step {left + 1}" in first.message
    assert 20 < left < 300
    # the node that left, by an independent computation of the distances from the recorded positions
    n = taxonomy().size
    x = np.array([[first.extras[f"x{i}"][left], first.extras[f"y{i}"][left]] for i in range(n)])
    out = np.linalg.norm(x, axis=1) >= 1
    assert out.any() and np.isnan(poincare_distances(torch.tensor(x)).numpy()[out][:, ~out]).all()


def test_a_chain_counts_its_nodes_against_the_limit():
    # (with branching 1 the node count came out 0, so a 1001-node chain passed the 400-node limit)
    assert len(balanced_tree(1, 399).names) == 400
    with pytest.raises(ValueError, match="400 nodes"):
        balanced_tree(1, 400)
    with pytest.raises(ValueError, match="400 nodes"):
        balanced_tree(2, 8)  # 511 nodes, as before
