"""The preconditioner lab's directions and measurements against closed forms: K-FAC where the
Fisher is a Kronecker product, the deep linear network result of Bernacchia et al. (2018),
quadratics, per-example outer products for Shampoo's factors, SOAP on a Kronecker statistic,
the polar factor for Muon, and the definitions of the three measurements."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from natgrad import preconditioners as pc
from natgrad.curvature import per_example_grads, per_example_jacobians
from natgrad.snapshots import curvature_snapshots
from natgrad.tasks.quadratic import kron_quadratic

D = torch.float64


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _linear_net(widths, bias, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:], strict=True)]).to(D)


@pytest.mark.parametrize("likelihood, n", [("gaussian", 6), ("softmax", 1)])
def test_kfac_is_the_natural_gradient_where_the_fisher_is_a_kronecker_product(likelihood, n):
    """One linear layer with the exact type-2 Fisher: with one example F = (a a^T) kron G
    exactly, and with a Gaussian likelihood G = I for every example, so F = E[a a^T] kron I
    for any number (Martens & Grosse 2015). K-FAC's direction is then the natural gradient's."""
    model = _linear_net((5, 4), bias=True)
    X = torch.randn(n, 5, dtype=D)
    y = torch.randn(n, 4, dtype=D) if likelihood == "gaussian" else torch.tensor([2])
    c = pc.from_model(model, X, y, likelihood)
    m = pc.measure(c, 1e-6)
    assert abs(m["K-FAC"].cosine - 1) < 1e-6 and m["K-FAC"].relative_error < 1e-3
    assert m["SGD"].cosine < 0.999  # the check is not vacuous: the Fisher is not isotropic


def test_deep_linear_network_kfac_is_the_natural_gradient_in_function_space():
    """Deep linear network, exact type-2 Fisher, one example: the Fisher is not block
    diagonal, so K-FAC's direction is not parallel to the (pseudo-inverse) natural gradient
    in parameter space; but every layer's K-FAC step alone fits the output error, so the
    network's output moves by L times the natural gradient's move, L the number of layers
    (Bernacchia, Lengyel & Hennequin, NeurIPS 2018)."""
    model = _linear_net((4, 3, 3, 2), bias=False, seed=1)
    X, y = torch.randn(1, 4, dtype=D), torch.randn(1, 2, dtype=D)
    c = pc.from_model(model, X, y, "gaussian")
    lam = 1e-10
    ng, kf = pc.natural_gradient(c, lam).d, pc.kfac(c, lam).d
    _, J = per_example_jacobians(model, X)  # (1, C, P)
    torch.testing.assert_close(J[0] @ kf, 3 * (J[0] @ ng), rtol=1e-6, atol=1e-9)
    assert _cos(J[0] @ kf, J[0] @ ng) > 1 - 1e-9
    m = pc.measure(c, lam)["K-FAC"]
    assert m.cosine < 0.99  # 0.956 here: not parallel in parameter space ...
    assert m.relative_error < 1e-3  # ... but the (F + lambda I)-norm only sees the output, where they agree


def test_sgd_on_an_isotropic_quadratic_is_the_natural_gradient():
    q = kron_quadratic(m=6, n=5, cond_left=1.0, cond_right=1.0, seed=2, dtype=D)
    m = pc.measure(pc.from_quadratic(q), 1e-3)
    assert abs(m["SGD"].cosine - 1) < 1e-12 and m["SGD"].relative_error < 1e-6
    assert m["SGD"].condition_number == pytest.approx(1.0)


def test_adam_on_a_rotated_ill_conditioned_quadratic_is_not_the_natural_gradient():
    """The rotation hides the Hessian A kron B from the diagonal: Adam's direction
    diag(H + lambda)^{-1/2} g is well away from (H + lambda I)^{-1} g (both by hand)."""
    q = kron_quadratic(m=6, n=5, cond_left=100.0, cond_right=100.0, seed=2, dtype=D)
    lam = 1e-6
    H, g = q.hessian(), q.gradient().reshape(-1)
    by_hand = _cos(g / (torch.diagonal(H) + lam).sqrt(), torch.linalg.solve(H + lam * torch.eye(30, dtype=D), g))
    m = pc.measure(pc.from_quadratic(q), lam)
    assert m["Adam / RMSprop"].cosine == pytest.approx(by_hand, abs=1e-12)
    assert m["Adam / RMSprop"].cosine < 0.9
    assert "K-FAC" not in m and "Sophia" not in m  # no likelihood: not applicable


def test_measurements_follow_their_definitions():
    """Relative error = that of the best multiple in the (F + lambda I)-norm (checked by a
    brute-force scan of the multiple); eigenvalues of P (F + lambda I) (from numpy's
    non-symmetric solver); the natural gradient's are all 1."""
    q = kron_quadratic(m=4, n=3, cond_left=20.0, cond_right=5.0, seed=3, dtype=D)
    c = pc.from_quadratic(q)
    lam = 1e-2
    Fl = c.fisher + lam * torch.eye(12, dtype=D)
    ng = torch.linalg.solve(Fl, c.g)
    m = pc.measure(c, lam)
    for name in ("SGD", "Adam / RMSprop", "Shampoo -1/4"):
        r = pc.METHODS[name](c, lam)
        scales = torch.linspace(0, 3, 30001, dtype=D) * float(ng.norm() / r.d.norm())
        errs = [float(((s * r.d - ng) @ Fl @ (s * r.d - ng)).sqrt() / (ng @ Fl @ ng).sqrt()) for s in scales]
        assert m[name].relative_error == pytest.approx(min(errs), abs=1e-6)
        ev = sorted(torch.linalg.eigvals(r.P @ Fl).real.tolist())
        assert m[name].eigenvalues == pytest.approx(ev, rel=1e-8)
    assert m["natural gradient"].eigenvalues == pytest.approx([1.0] * 12)
    with pytest.raises(ValueError):
        pc.measure(c, 0.0)


def test_shampoo_factors_are_means_of_per_example_outer_products():
    """With the empirical statistic, S = mean of g_n g_n^T, so Shampoo's factors are
    L = mean G_n G_n^T and R = mean G_n^T G_n of the per-example weight gradients."""
    model = _linear_net((3, 4, 2), bias=True, seed=4)
    X, y = torch.randn(7, 3, dtype=D), torch.tensor([0, 1, 1, 0, 1, 0, 0])
    c = pc.from_model(model, X, y, "softmax", statistic="empirical")
    lam = 1e-3
    Gs = per_example_grads(model, X, y, "softmax")[:, :12].reshape(7, 4, 3)  # first weight (4 x 3)
    L, R = torch.einsum("nij,nkj->ik", Gs, Gs) / 7, torch.einsum("nji,njk->ik", Gs, Gs) / 7

    def root(M, p):
        w, U = torch.linalg.eigh(M)
        return (U * (w.clamp_min(0) + lam) ** (-1 / p)) @ U.T

    for p, name in ((4, "Shampoo -1/4"), (2, "Shampoo -1/2")):
        P = pc.METHODS[name](c, lam).P
        torch.testing.assert_close(P[:12, :12], torch.kron(root(L, p), root(R, p)), rtol=1e-10, atol=1e-12)


def test_soap_on_a_kronecker_statistic_is_its_inverse_square_root():
    """If S = L kron R exactly, Adam's diagonal in the eigenbasis of L and R holds S's
    eigenvalues, so SOAP's preconditioner is (S + lambda I)^{-1/2}."""
    g = torch.Generator().manual_seed(5)
    A, B = torch.randn(4, 4, generator=g, dtype=D), torch.randn(3, 3, generator=g, dtype=D)
    S = torch.kron(A @ A.T, B @ B.T)
    c = pc.Curvature(g=torch.randn(12, generator=g, dtype=D), fisher=S, statistic=S,
                     matrices=(pc.MatrixParam("W", 0, (4, 3)),))
    w, U = torch.linalg.eigh(S)
    torch.testing.assert_close(pc.soap(c, 1e-2).P, (U * (w + 1e-2) ** -0.5) @ U.T, rtol=1e-9, atol=1e-11)


def test_muon_direction_is_the_polar_factor_and_sophia_clips():
    g = torch.Generator().manual_seed(6)
    G = torch.randn(5, 3, generator=g, dtype=D)
    c = pc.Curvature(g=torch.cat([G.reshape(-1), torch.ones(2, dtype=D)]), fisher=torch.eye(17, dtype=D),
                     statistic=torch.eye(17, dtype=D), matrices=(pc.MatrixParam("W", 0, (5, 3)),),
                     gnb=torch.tensor([1e-6] * 8 + [1e4] * 9, dtype=D))
    d = pc.muon(c, 1e-3).d
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(d[:15].reshape(5, 3), U @ Vh)
    torch.testing.assert_close(d[15:], torch.ones(2, dtype=D) / (1 + 1e-3) ** 0.5)  # Adam on the rest
    s = pc.sophia(c, 1e-3).d
    assert s.abs().max() <= 1 and torch.all(s[:8].abs() == 1)  # tiny curvature: clipped to the sign
    torch.testing.assert_close(s[8:], c.g[8:] / (pc.SOPHIA_GAMMA * 1e4))


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_muon_keeps_no_direction_where_the_gradient_has_none(rank):
    # the lambda -> 0 limit of (GG^T + lambda)^(-1/4) G (G^T G + lambda)^(-1/4), computed at a tiny lambda by
    # eigendecompositions: U_r V_r^T over the r nonzero singular values (a full U V^T had singular values 1 where
    # G has 0; a zero gradient gave a nonzero step)
    g = torch.Generator().manual_seed(rank)
    G = torch.randn(5, rank, generator=g, dtype=D) @ torch.randn(rank, 4, generator=g, dtype=D)
    c = pc.Curvature(g=G.reshape(-1), fisher=torch.eye(20, dtype=D), statistic=torch.eye(20, dtype=D),
                     matrices=(pc.MatrixParam("W", 0, (5, 4)),))
    d = pc.muon(c, 1e-3).d.reshape(5, 4)
    lam = 1e-14

    def power(M):
        w, Q = torch.linalg.eigh(M)
        return Q @ torch.diag((w.clamp_min(0) + lam) ** -0.25) @ Q.T

    limit = power(G @ G.T) @ G @ power(G.T @ G)
    torch.testing.assert_close(d, limit, atol=1e-5, rtol=0)
    assert torch.linalg.matrix_rank(d) == rank
    sv = torch.linalg.svdvals(d)
    torch.testing.assert_close(sv[:rank], torch.ones(rank, dtype=D))


@pytest.mark.parametrize("shape", [(24, 16), (8, 32)])
def test_muon_is_shampoo_without_accumulation(shape):
    r = pc.muon_as_shampoo(*shape, seed=1)
    assert r["shampoo_vs_polar"] < 1e-6
    sv = r["singular_values"]["torch.optim.Muon"]
    assert 0.4 < min(sv) and max(sv) < 1.6 and r["muon_cosine"] > 0.9  # approximately orthogonal
    assert r["muon_vs_polar"] > 1e-3  # ... and only approximately


def test_curvature_snapshots_along_training():
    snaps = curvature_snapshots([0, 3], examples=32)
    assert [t for t, _, _ in snaps] == [0, 3] and snaps[1][1] < snaps[0][1]
    c = snaps[1][2]
    assert c.g.shape == (444,) and c.fisher.shape == (444, 444) and len(c.matrices) == 3
    ms = pc.measure_along([s[2] for s in snaps], 1e-3)
    assert set(ms[0]) == set(pc.METHODS) and all(-1 <= m.cosine <= 1 for m in ms[1].values())


def test_a_convolutional_model_is_compared_without_kfac():
    """natgrad.curvature has K-FAC factors for nn.Linear layers only: on a conv net K-FAC is left out and every
    other method is measured; the natural gradient is (F + lambda I)^-1 g by a direct solve."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()
    X, y = torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    c = pc.from_model(model, X, y, "softmax")
    assert c.kfac is None
    results = pc.measure(c, 1e-3)
    assert "K-FAC" not in results and len(results) == len(pc.METHODS) - 1
    lam_eye = 1e-3 * torch.eye(c.size, dtype=torch.float64)
    torch.testing.assert_close(pc.natural_gradient(c, 1e-3).d, torch.linalg.solve(c.fisher + lam_eye, c.g))
    assert results["natural gradient"].cosine == pytest.approx(1.0)


def test_a_layer_the_forward_pass_skips_has_zero_factors_and_zero_gradient():
    # an unused head: K-FAC's factors were a KeyError, and from_model failed on the head's missing gradient
    class WithUnusedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = WithUnusedHead().to(D)
    X, y = torch.randn(1, 3, dtype=D), torch.tensor([2])
    c = pc.from_model(model, X, y, "softmax")
    # one example and one layer in use: K-FAC is that layer's exact Fisher block, and the head's block is 0 in both
    torch.testing.assert_close(c.kfac, c.fisher)
    assert torch.count_nonzero(c.fisher[12:]) == 0 and torch.count_nonzero(c.g[12:]) == 0
    assert torch.count_nonzero(c.g[:12]) > 0
    assert "K-FAC" in pc.measure(c, 1e-3)


def test_measure_takes_a_float32_fisher_at_a_tiny_damping():
    # F in float32 is PSD only up to rounding: a Cholesky of F + 1e-8 I failed; the natural gradient clamps
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    X, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    c = pc.from_model(model, X, y, "softmax")
    assert c.fisher.dtype == torch.float32 and torch.linalg.eigvalsh(c.fisher.double()).min() < 1e-6
    m = pc.measure(c, 1e-8)
    for x in m.values():  # (float32 directions are inexact at a condition number of 1e8, but every number is one)
        assert -1 <= x.cosine <= 1 and 0 <= x.relative_error <= 1
        assert all(v >= 0 and math.isfinite(v) for v in x.eigenvalues)
    # SGD's d = g is exact in float32: its cosine is the float64 one
    c64 = pc.Curvature(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in vars(c).items()})
    assert m["SGD"].cosine == pytest.approx(pc.measure(c64, 1e-8)["SGD"].cosine, rel=1e-4)
    assert pc.measure(c64, 1e-8)["natural gradient"].cosine == pytest.approx(1.0, abs=1e-9)
