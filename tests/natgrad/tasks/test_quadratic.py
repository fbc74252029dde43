"""The Kronecker quadratic task against its closed forms: loss, gradient, Hessian,
spectrum; and experiments.run on it against a hand-written Adam loop."""

from __future__ import annotations

import math

import pytest
import torch

from natgrad.experiments import TASKS, Spec, make_task, run
from natgrad.tasks.quadratic import KroneckerQuadratic, kron_quadratic


def _closed_form_loss(W, A, B, W_star):
    E = W - W_star
    return 0.5 * torch.trace(E.T @ A @ E @ B)


@pytest.fixture
def q():
    q = kron_quadratic(m=5, n=4, cond_left=30.0, cond_right=7.0, seed=3, dtype=torch.float64)
    with torch.no_grad():
        q.weight.copy_(torch.randn(5, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    return q


def test_loss_and_gradient_match_the_closed_forms(q):
    A, B, W_star = q.left, q.right, q.w_star
    loss = q()
    torch.testing.assert_close(loss, _closed_form_loss(q.weight.detach(), A, B, W_star))
    loss.backward()
    expected = A @ (q.weight.detach() - W_star) @ B
    torch.testing.assert_close(q.weight.grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.gradient(), expected, rtol=1e-12, atol=1e-12)


def test_hessian_is_the_kronecker_product(q):
    """autograd's Hessian of f over the row-stacked W is A kron B (B kron A column-stacked),
    and f is exactly its quadratic form: f(W) = 1/2 e^T (A kron B) e, e = vec(W - W*)."""
    def f(w_flat):
        return _closed_form_loss(w_flat.reshape(5, 4), q.left, q.right, q.w_star)

    w = q.weight.detach().reshape(-1)
    H = torch.autograd.functional.hessian(f, w)  # (20, 20)
    torch.testing.assert_close(H, q.hessian(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H, torch.kron(q.left, q.right))
    e = (q.weight.detach() - q.w_star).reshape(-1)
    torch.testing.assert_close(0.5 * e @ H @ e, q().detach())
    torch.testing.assert_close(H.reshape(5, 4, 5, 4).permute(1, 0, 3, 2).reshape(20, 20),
                               torch.kron(q.right, q.left))  # column-stacked


def test_minimum_is_zero_at_w_star(q):
    with torch.no_grad():
        q.weight.copy_(q.w_star)
    assert q().item() == 0.0
    assert torch.count_nonzero(q.gradient()) == 0
    assert bool((torch.linalg.eigvalsh(q.hessian()) > 0).all())  # strictly convex: W* is the only minimum


def test_spectrum_and_condition_number(q):
    a, b = torch.linalg.eigvalsh(q.left), torch.linalg.eigvalsh(q.right)
    torch.testing.assert_close(a, torch.logspace(0, -math.log10(30.0), 5, dtype=torch.float64).flip(0))
    torch.testing.assert_close(b, torch.logspace(0, -math.log10(7.0), 4, dtype=torch.float64).flip(0))
    h = torch.linalg.eigvalsh(q.hessian())
    assert q.condition_number() == pytest.approx(30.0 * 7.0, rel=1e-9)
    assert float(h[-1] / h[0]) == pytest.approx(30.0 * 7.0, rel=1e-9)
    assert torch.allclose(q.left, q.left.T) and torch.allclose(q.right, q.right.T)
    flat = kron_quadratic(m=3, n=3, cond_left=1.0, cond_right=1.0)
    torch.testing.assert_close(flat.left, torch.eye(3))


def test_same_seed_same_problem_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = kron_quadratic(seed=1), kron_quadratic(seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.left, b.left) and torch.equal(a.w_star, b.w_star)
    assert not torch.equal(a.w_star, kron_quadratic(seed=2).w_star)
    assert torch.count_nonzero(a.weight) == 0  # W starts at 0


def test_bad_shapes_and_conditions_are_rejected():
    with pytest.raises(ValueError, match="condition number"):
        kron_quadratic(cond_left=0.5)
    with pytest.raises(ValueError, match="shape"):
        KroneckerQuadratic(torch.eye(3), torch.eye(2), torch.zeros(2, 2))


def test_run_on_the_quadratic_equals_a_hand_written_adam_loop():
    opts = {"m": 6, "n": 5, "cond_left": 100.0, "cond_right": 10.0}
    spec = Spec.make({"lr": 0.1}, opts, task="kron-quadratic", optimizer="adam", steps=25)
    assert spec == Spec.make({"lr": 0.1}, dict(reversed(opts.items())), task="kron-quadratic", optimizer="adam",
                             steps=25)
    assert hash(spec) == hash(Spec.make({"lr": 0.1}, opts, task="kron-quadratic", optimizer="adam", steps=25))
    traj = run(spec)
    problem = kron_quadratic(seed=0, **opts)
    A, B, W_star = problem.left, problem.right, problem.w_star
    W = torch.nn.Parameter(torch.zeros(6, 5))
    opt = torch.optim.Adam([W], lr=0.1)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = _closed_form_loss(W, A, B, W_star)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert traj.status == "ok" and "kron-quadratic" in TASKS
    assert traj.loss == pytest.approx(losses, rel=1e-5)
    assert losses[-1] < 0.5 * losses[0]


def test_minus_half_per_factor_beats_minus_quarter_on_a_skewed_quadratic():
    """What the why-quarter lab shows: with the gradient A E B, Shampoo's statistics grow like
    squares of the Hessian's factors, so -1/2 per factor (exponent_override=2) undoes the
    curvature and ends far lower than the default -1/4 at the same grafted step length."""
    opts = {"cond_left": 100.0, "cond_right": 100.0}
    base = dict(lr=0.3, epsilon=1e-4, epsilon_mode="relative", precondition_frequency=10, grafting="adam")
    half = run(Spec.make(base | {"exponent_override": 2}, opts, task="kron-quadratic", optimizer="shampoo", steps=200))
    quarter = run(Spec.make(base | {"exponent_override": 4}, opts, task="kron-quadratic", optimizer="shampoo",
                            steps=200))
    assert half.status == quarter.status == "ok"
    assert half.final_loss < 0.1 * quarter.final_loss < 0.1 * half.loss[0]


def test_task_options_errors_are_reported_in_words():
    traj = run(Spec.make({"lr": 0.1}, {"cond_left": 0.5}, task="kron-quadratic", steps=3))
    assert traj.status == "error" and "condition number" in traj.message
    traj = run(Spec.make({"lr": 0.1}, {"m": 3}, task="digits-autoencoder", steps=3))
    assert traj.status == "error" and "has no option 'm'; it takes no options" in traj.message
    traj = run(Spec.make({"lr": 0.1}, {"k": 4, "rank": 2}, task="stiefel-pca", steps=3))
    assert traj.status == "error" and "has no option 'rank'; its options are " in traj.message
    assert "k" in traj.message.split("its options are ")[1].split(", ")
    traj = run(Spec.make({}, task="nope", steps=3))
    assert traj.status == "error" and "unknown task" in traj.message


def test_the_task_names_its_options_and_refuses_what_it_cannot_build():
    # (an unknown option was a TypeError, an infinite condition number a LinAlgError later, and in float32 a
    # condition number of 1e10 gave an indefinite A whose condition_number() was negative)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="its options are cond_left, cond_right, m, n"):
        make_task("kron-quadratic", 0, cpu, torch.float64, {"bogus": 1})
    with pytest.raises(ValueError, match="finite condition number"):
        make_task("kron-quadratic", 0, cpu, torch.float64, {"cond_left": math.inf})
    with pytest.raises(ValueError, match="beyond torch.float32"):
        make_task("kron-quadratic", 0, cpu, torch.float32, {"cond_left": 1e10})
    q = make_task("kron-quadratic", 0, cpu, torch.float64, {"cond_left": 1e10, "cond_right": 1.0}).model
    assert q.condition_number() == pytest.approx(1e10, rel=1e-3)
