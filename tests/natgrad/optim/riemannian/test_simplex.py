"""ProbabilitySimplex against independent facts: the properties geoopt's own manifold tests check
(projection, tangent projection, retraction, transport, broadcasting, exp/log), the definition of
the Riemannian gradient, the closed-form Fisher-Rao distance, geoopt's unit sphere through
y = sqrt(p), the exponentiated-gradient formula, finite differences, and geoopt's optimizers."""

from __future__ import annotations

import geoopt
import numpy as np
import pytest
import torch

from natgrad.optim.riemannian import ProbabilitySimplex, ProbabilitySimplexExact, RiemannianSGD, project_onto_simplex
from tests.conftest import ROOT

SIMPLEX = ProbabilitySimplex()


@pytest.fixture(params=[0, 1, 2, 3], ids=lambda s: f"seed{s}")
def case(request):
    """A batch of 6 points on the 5-outcome simplex, tangent vectors there, and arbitrary ambient vectors."""
    g = torch.Generator().manual_seed(request.param)
    x = SIMPLEX.random(6, 5, dtype=torch.float64, seed=request.param).as_subclass(torch.Tensor)
    ambient = torch.randn(6, 5, generator=g, dtype=torch.float64)
    u = SIMPLEX.proju(x, 0.3 * torch.randn(6, 5, generator=g, dtype=torch.float64) * x)
    return x, u, ambient


def _tangent_basis(k: int) -> torch.Tensor:
    """(k - 1, k) rows spanning {u : sum u = 0}."""
    return torch.eye(k, dtype=torch.float64)[:-1] - torch.eye(k, dtype=torch.float64)[-1]


# ------------------------------------------------------------------------- points and projections
def test_random_points_and_origin_are_on_the_manifold(case):
    x, _, _ = case
    SIMPLEX.assert_check_point_on_manifold(x)
    assert torch.equal(SIMPLEX.origin(4, dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64))
    ok, reason = SIMPLEX.check_point_on_manifold(torch.tensor([0.5, 0.6, -0.1]), explain=True)
    assert not ok and "p_i <= 0" in reason
    assert not SIMPLEX.check_point_on_manifold(torch.tensor([0.5, 0.6, 0.1]))
    with pytest.raises(ValueError, match="at least 2 outcomes"):
        SIMPLEX.random(3, 1)


def test_projection_is_identity_on_the_manifold_and_idempotent(case):
    x, _, ambient = case
    torch.testing.assert_close(SIMPLEX.projx(x), x, atol=1e-12, rtol=0)
    p = SIMPLEX.projx(ambient)
    SIMPLEX.assert_check_point_on_manifold(p)
    torch.testing.assert_close(SIMPLEX.projx(p), p, atol=1e-12, rtol=0)


def test_projection_is_the_euclidean_one_by_its_optimality_conditions(case):
    """KKT of min |p - y|^2 s.t. p >= f, sum p = 1: y - p = theta on the free coordinates, <= theta at the floor."""
    _, _, ambient = case
    f = SIMPLEX.floor
    y = 2.0 * ambient
    p = project_onto_simplex(y, f)
    for yi, pi in zip(y, p, strict=True):
        free = pi > f + 1e-15
        theta = (yi - pi)[free]
        assert free.any() and torch.allclose(theta, theta[0].expand_as(theta), atol=1e-12)
        assert bool(((yi - pi)[~free] <= theta[0] + 1e-12).all())
    # and against a brute-force minimiser for one 3-outcome point: every point of a fine grid is farther
    q = project_onto_simplex(torch.tensor([0.9, 0.4, -0.5], dtype=torch.float64))
    a, b = np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401))
    grid = np.stack([a, b, 1 - a - b], -1)[(a + b) <= 1]
    best = grid[np.argmin(((grid - [0.9, 0.4, -0.5]) ** 2).sum(-1))]
    np.testing.assert_allclose(q.numpy(), best, atol=2.5e-3)


def test_tangent_projection_is_fisher_rao_orthogonal_and_idempotent(case):
    x, _, ambient = case
    pu = SIMPLEX.proju(x, ambient)
    SIMPLEX.assert_check_vector_on_tangent(x, pu)
    torch.testing.assert_close(SIMPLEX.proju(x, pu), pu)
    basis = _tangent_basis(5)
    residual = ambient - pu
    for w in basis:  # the removed part is orthogonal, in the Fisher metric, to every tangent vector
        torch.testing.assert_close(SIMPLEX.inner(x, residual, w.expand_as(x)), torch.zeros(6, dtype=torch.float64),
                                   atol=1e-12, rtol=0)


def test_riemannian_gradient_satisfies_its_definition(case):
    """<grad f, w>_p = <g, w> for every tangent w, and grad f is tangent (Absil et al. 2008, eq. 3.31)."""
    x, _, g = case
    rgrad = SIMPLEX.egrad2rgrad(x, g)
    SIMPLEX.assert_check_vector_on_tangent(x, rgrad)
    for w in _tangent_basis(5):
        w = w.expand_as(x)
        torch.testing.assert_close(SIMPLEX.inner(x, rgrad, w), (g * w).sum(-1))
    # and it is the natural gradient F^{-1} g of the categorical distribution in the coordinates p_1..p_{k-1}
    # (p_k = 1 - sum): F = diag(1/p_i) + 1/p_k, so F^{-1} g_reduced gives the first k - 1 entries
    p, gi = x[0], g[0]
    fisher = torch.diag(1 / p[:-1]) + 1 / p[-1]
    reduced = gi[:-1] - gi[-1]
    torch.testing.assert_close(torch.linalg.solve(fisher, reduced), rgrad[0, :-1])


def test_natural_gradient_of_the_kl_objective_is_p_minus_q():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    torch.sum(q * torch.log(q / p)).backward()
    torch.testing.assert_close(SIMPLEX.egrad2rgrad(p.detach(), p.grad), p.detach() - q)


# ------------------------------------------------------------------------- retraction
def test_retraction_at_zero_is_the_identity_and_its_differential_too(case):
    x, u, _ = case
    torch.testing.assert_close(SIMPLEX.retr(x, torch.zeros_like(x)), x, atol=1e-15, rtol=0)
    h = 1e-6
    dr = (SIMPLEX.retr(x, h * u) - SIMPLEX.retr(x, -h * u)) / (2 * h)
    torch.testing.assert_close(dr, u, atol=1e-8, rtol=1e-6)


def test_retraction_of_the_gradient_step_is_exponentiated_gradient(case):
    x, _, g = case
    eta = 0.7
    eg = x * torch.exp(-eta * g)
    eg = eg / eg.sum(-1, keepdim=True)  # Kivinen & Warmuth (1997)
    torch.testing.assert_close(SIMPLEX.retr(x, -eta * SIMPLEX.egrad2rgrad(x, g)), eg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_retraction_keeps_every_point_in_the_open_simplex(dtype):
    x = SIMPLEX.random(200, 3, dtype=dtype, seed=5).as_subclass(torch.Tensor)
    u = SIMPLEX.proju(x, 50.0 * torch.randn(200, 3, generator=torch.Generator().manual_seed(5), dtype=dtype))
    for y in (SIMPLEX.retr(x, u), SIMPLEX.expmap(x, u)):
        assert bool((y > 0).all())
        assert float((y.sum(-1) - 1).abs().max()) < 1e-6


# ------------------------------------------------------------------------- exponential map
def _fisher_rao_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 2 * np.arccos(np.clip(np.sqrt(p * q).sum(-1), -1, 1))


def test_distance_is_the_closed_form(case):
    x, _, _ = case
    y = SIMPLEX.random(6, 5, dtype=torch.float64, seed=99).as_subclass(torch.Tensor)
    np.testing.assert_allclose(SIMPLEX.dist(x, y).numpy(), _fisher_rao_distance(x.numpy(), y.numpy()), atol=1e-12)
    assert float(ProbabilitySimplex().dist(torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1]))) == pytest.approx(
        0.9273, abs=1e-4)


def test_exponential_map_travels_the_length_of_its_vector(case):
    """dist(p, Exp_p(u)) = ||u||_p with the closed-form distance, while the geodesic stays off the faces."""
    x, u, _ = case
    u = u * (0.5 * SIMPLEX.face_time(x, u)).clamp(max=1.0)[:, None]  # stop well before a face
    y = SIMPLEX.expmap(x, u)
    SIMPLEX.assert_check_point_on_manifold(y)
    np.testing.assert_allclose(_fisher_rao_distance(x.numpy(), y.numpy()), SIMPLEX.norm(x, u).numpy(), rtol=1e-9)
    torch.testing.assert_close(SIMPLEX.expmap(x, torch.zeros_like(x)), x)
    h = 1e-6
    torch.testing.assert_close((SIMPLEX.expmap(x, h * u) - SIMPLEX.expmap(x, -h * u)) / (2 * h), u, atol=1e-8,
                               rtol=1e-6)
    torch.testing.assert_close(SIMPLEX.logmap(x, y), u, atol=1e-10, rtol=1e-8)


def test_exponential_map_is_geoopts_sphere_geodesic_through_the_square_root(case):
    """y = sqrt(p) maps the simplex to the unit sphere with metric / 4; Exp on the simplex is geoopt's SphereExact
    after that map: y' = Exp^sphere_y(u / (2 sqrt p)), p' = y'^2. Past a face too (that is the reflection)."""
    x, u, _ = case
    for scale in (0.5, 3.0):  # 3: most of these geodesics have crossed a face
        y = geoopt.SphereExact().expmap(torch.sqrt(x), scale * u / (2 * torch.sqrt(x)))
        torch.testing.assert_close(SIMPLEX.expmap(x, scale * u), (y**2).clamp_min(SIMPLEX.floor) /
                                   (y**2).clamp_min(SIMPLEX.floor).sum(-1, keepdim=True), atol=1e-12, rtol=0)


def test_face_time_is_where_the_sphere_geodesic_changes_sign():
    x = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    u = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    t = float(SIMPLEX.face_time(x, u))
    ts = torch.linspace(0, 2 * t, 4001, dtype=torch.float64)[:, None]
    y = geoopt.SphereExact().expmap(torch.sqrt(x).expand(len(ts), 3), ts * u / (2 * torch.sqrt(x)))
    first = int(torch.nonzero((y < 0).any(-1))[0])
    assert float(ts[first - 1]) <= t <= float(ts[first])
    assert float(SIMPLEX.face_time(x, torch.zeros_like(u))) == float("inf")


# ------------------------------------------------------------------------- transport, broadcasting
def test_transport_is_the_differential_of_the_retraction(case):
    """ProbabilitySimplex carries v from p to q = R_p(u) as d/ds R_p(u + s v) at s = 0 (central finite
    differences), which keeps v/p, the step in log p; the exact variant keeps v itself."""
    x, u, ambient = case
    y = SIMPLEX.retr(x, u)
    v = SIMPLEX.proju(x, ambient * x)
    t = SIMPLEX.transp(x, y, v)
    SIMPLEX.assert_check_vector_on_tangent(y, t)
    s = 1e-6
    numeric = (SIMPLEX.retr(x, u + s * v) - SIMPLEX.retr(x, u - s * v)) / (2 * s)
    torch.testing.assert_close(t, numeric, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(SIMPLEX.transp(x, x, v), v)  # no step: nothing changes
    y2, t2 = SIMPLEX.retr_transp(x, u, v)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(t2, t)
    exact = ProbabilitySimplexExact()
    torch.testing.assert_close(exact.transp(x, exact.retr(x, u), v), v)


def test_batched_operations_equal_one_point_at_a_time(case):
    x, u, ambient = case
    batched = (SIMPLEX.projx(ambient), SIMPLEX.retr(x, u), SIMPLEX.expmap(x, u), SIMPLEX.egrad2rgrad(x, ambient),
               SIMPLEX.inner(x, u, ambient))
    for i in range(len(x)):
        single = (SIMPLEX.projx(ambient[i]), SIMPLEX.retr(x[i], u[i]), SIMPLEX.expmap(x[i], u[i]),
                  SIMPLEX.egrad2rgrad(x[i], ambient[i]), SIMPLEX.inner(x[i], u[i], ambient[i]))
        for b, s in zip(batched, single, strict=True):
            torch.testing.assert_close(b[i], s)


# ------------------------------------------------------------------------- geoopt's optimizers
def _kl_run(optimizer, manifold, steps, dtype=torch.float64, start=(0.8, 0.15, 0.05), target=(0.1, 0.3, 0.6)):
    p = geoopt.ManifoldParameter(torch.tensor(start, dtype=dtype), manifold=manifold)
    q = torch.tensor(target, dtype=dtype)
    opt = optimizer([p])
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.sum(q * torch.log(q / p))
        loss.backward()
        opt.step()
        seen.append(p.detach().clone())
    return p.detach(), q, torch.stack(seen)


@pytest.mark.parametrize("manifold", [ProbabilitySimplex(), ProbabilitySimplexExact()], ids=["retraction", "exact"])
def test_geoopts_riemannian_adam_and_sgd_run_on_it_and_find_the_target(manifold):
    p, q, _ = _kl_run(lambda ps: geoopt.optim.RiemannianAdam(ps, lr=0.05), manifold, 400)
    torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    p, q, _ = _kl_run(lambda ps: RiemannianSGD(ps, lr=0.3, momentum=0.5), manifold, 200)
    torch.testing.assert_close(p, q, atol=1e-8, rtol=0)
    p, q, _ = _kl_run(lambda ps: geoopt.optim.RiemannianSGD(ps, lr=1.0), ProbabilitySimplex(), 1)
    # one full natural-gradient step lands p + (q - p) = q to first order; the retraction bends it a little
    assert float(SIMPLEX.dist(p, q)) < float(SIMPLEX.dist(torch.tensor([0.8, 0.15, 0.05], dtype=torch.float64), q))


def test_every_iterate_stays_in_the_open_simplex_in_float32():
    _, _, seen = _kl_run(lambda ps: geoopt.optim.RiemannianAdam(ps, lr=0.5), ProbabilitySimplex(), 300,
                         dtype=torch.float32, target=(0.98, 0.0199, 0.0001))
    assert bool((seen > 0).all())
    assert float((seen.sum(-1) - 1).abs().max()) < 1e-6


FITS = 12  # random categorical targets and starts, fitted by RiemannianSGD with momentum 0.9 and lr 0.01


class _IdentityTransport(ProbabilitySimplex):
    """The simplex with the identity as vector transport (what ProbabilitySimplex used before)."""

    def transp(self, x, y, v):
        return self.proju(y, v)


def _momentum_fit_gap(seed: int, manifold: ProbabilitySimplex) -> float:
    """Cross-entropy -sum q log p after 300 steps minus its least value, the entropy of q (at p = q, by Gibbs'
    inequality): 3 to 50 outcomes, random starts with some coordinates near 0."""
    k = [3, 5, 10, 50][seed % 4]
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64) * (1 + seed % 3), 0)
    p = geoopt.ManifoldParameter(manifold.random(k, dtype=torch.float64, seed=seed), manifold=manifold)
    opt = RiemannianSGD([p], lr=0.01, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        (-(q * torch.log(p)).sum()).backward()
        opt.step()
    return float(-(q * torch.log(p.detach())).sum() + (q * torch.log(q)).sum())


@pytest.mark.parametrize("seed", range(FITS))
def test_momentum_fits_a_categorical_distribution_from_random_starts(seed):
    gap = _momentum_fit_gap(seed, SIMPLEX)
    assert 0 <= gap < 1e-6, gap


def test_with_the_identity_transport_most_momentum_fits_stick_as_lesson_7_says():
    """The same fits with the identity transport: the count lesson 7 (and the simplex module) quotes."""
    stuck = sum(not 0 <= _momentum_fit_gap(seed, _IdentityTransport()) < 1e-6 for seed in range(FITS))
    assert stuck == 10
    lesson = (ROOT / "lessons" / "07-riemannian" / "lesson.md").read_text()
    assert f"got stuck in {stuck} of {FITS} runs" in lesson
