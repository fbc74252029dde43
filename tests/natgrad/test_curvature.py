"""natgrad.curvature against independent answers.

Oracles: curvlinops 3.0.1 (GGNLinearOperator, EFLinearOperator,
KFACLinearOperator, materialized with ``@ eye(P)``), closed forms (one-example
Kronecker structure, deep linear networks), and exact expectations for the
Monte-Carlo estimators. Everything in float64.

Scaling between curvlinops and us (read from curvlinops' source):
* CrossEntropyLoss(reduction="mean"): GGN, EF and K-FAC factors equal ours.
* MSELoss(reduction="sum"): loss sum_n ||f - y||^2 has output Hessian 2I and
  gradient 2(f - y), so its GGN / K-FAC G are 2N x ours and its EF / empirical
  G are 4N x ours (our Gaussian loss is 0.5 ||f - y||^2 per example, batch mean).
  K-FAC's A is a mean over examples in both.
"""

import math

import pytest
import torch
from torch import nn

from natgrad.curvature import (
    block_diagonal,
    diag_fisher,
    exact_fisher,
    flatten_params,
    kfac_block,
    kfac_factors,
    kfac_matrix,
    layer_slices,
    num_params,
    param_list,
    per_example_grads,
    relative_error,
)
from tests.natgrad.models import mlp

curvlinops = pytest.importorskip("curvlinops")

DT = torch.float64
N = 7


def _mlp(widths, act=nn.Tanh, seed=0):
    return mlp(widths, act, seed, DT)


def _problem(likelihood, widths=None, act=nn.Tanh, n=N, seed=0):
    """A small model, inputs and targets. softmax: 4-5-3; gaussian: 4-6-4 (targets = inputs)."""
    widths = widths or ((4, 5, 3) if likelihood == "softmax" else (4, 6, 4))
    model = _mlp(widths, act, seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, widths[0], dtype=DT, generator=g)
    if likelihood == "softmax":
        y = torch.randint(0, widths[-1], (n,), generator=g)
    else:
        y = X.clone() if widths[-1] == widths[0] else torch.randn(n, widths[-1], dtype=DT, generator=g)
    return model, X, y


def _cl_loss(likelihood):
    return nn.CrossEntropyLoss() if likelihood == "softmax" else nn.MSELoss(reduction="sum")


def _dense(op, model):
    return op @ torch.eye(num_params(model), dtype=DT)


def _params(model):
    return [p for _, p in param_list(model)]


# ---------------------------------------------------------------- conventions


def test_param_list_flattening_and_layer_slices():
    model = _mlp((3, 4, 2))
    model[0].bias.requires_grad_(False)
    names = [n for n, _ in param_list(model)]
    assert names == ["0.weight", "2.weight", "2.bias"]
    flat = flatten_params([p for _, p in param_list(model)], model)
    W = model[0].weight
    assert flat[1 * 3 + 2] == W[1, 2]  # W[o, i] at o*in + i
    assert torch.equal(flat, torch.cat([p.reshape(-1) for p in model.parameters() if p.requires_grad]))
    assert layer_slices(model) == {"0": slice(0, 12), "2": slice(12, 22)}


def test_kfac_block_ordering_matches_gradient_outer_product():
    """For one example, grad_W = g a^T and grad_b = g: the flattened gradient's
    outer product must equal kfac_block(a a^T, g g^T) (with [a, 1] for the bias)."""
    g_ = torch.Generator().manual_seed(3)
    a, g = torch.randn(4, dtype=DT, generator=g_), torch.randn(3, dtype=DT, generator=g_)
    grad_flat = torch.cat([torch.outer(g, a).reshape(-1), g])  # our order: W row-major, then b
    abar = torch.cat([a, torch.ones(1, dtype=DT)])
    assert torch.allclose(
        kfac_block(torch.outer(abar, abar), torch.outer(g, g), True), torch.outer(grad_flat, grad_flat)
    )
    grad_w = torch.outer(g, a).reshape(-1)
    assert torch.allclose(kfac_block(torch.outer(a, a), torch.outer(g, g), False), torch.outer(grad_w, grad_w))


def test_block_diagonal_and_relative_error():
    model = _mlp((3, 4, 2))
    F = torch.arange(num_params(model) ** 2, dtype=DT).reshape(num_params(model), -1) + 1
    B = block_diagonal(F, model)
    assert torch.equal(B[:16, :16], F[:16, :16]) and torch.equal(B[16:, 16:], F[16:, 16:])
    assert B[:16, 16:].abs().sum() == 0 and B[16:, :16].abs().sum() == 0
    assert relative_error(F, F) == 0.0
    assert math.isclose(relative_error(2 * F, F), 1.0)


# ------------------------------------------------- exact matrices vs curvlinops


@pytest.mark.parametrize("likelihood", ["softmax", "gaussian"])
def test_exact_ggn_and_fisher_match_curvlinops_ggn(likelihood):
    model, X, y = _problem(likelihood)
    scale = 1.0 if likelihood == "softmax" else 2.0 * N
    ggn_cl = _dense(curvlinops.GGNLinearOperator(model, _cl_loss(likelihood), _params(model), [(X, y)]), model)
    ggn = exact_fisher(model, X, y, likelihood=likelihood, kind="ggn")
    fisher = exact_fisher(model, X, likelihood=likelihood, kind="true")
    assert relative_error(scale * ggn, ggn_cl) < 1e-12
    assert relative_error(scale * fisher, ggn_cl) < 1e-12  # F = GGN for CE and unit Gaussian


@pytest.mark.parametrize("likelihood", ["softmax", "gaussian"])
def test_empirical_fisher_matches_curvlinops_ef(likelihood):
    model, X, y = _problem(likelihood)
    scale = 1.0 if likelihood == "softmax" else 4.0 * N
    ef_cl = _dense(curvlinops.EFLinearOperator(model, _cl_loss(likelihood), _params(model), [(X, y)]), model)
    ef = exact_fisher(model, X, y, likelihood=likelihood, kind="empirical")
    assert relative_error(scale * ef, ef_cl) < 1e-12


def test_true_fisher_and_ggn_agree_via_independent_paths():
    """softmax 'true' sums p_c g_c g_c^T over labels; 'ggn' uses the autodiff output
    Hessian: two computations, one matrix (Martens 2020, section 9.2)."""
    model, X, y = _problem("softmax", widths=(3, 6, 5))
    F = exact_fisher(model, X, kind="true")
    G = exact_fisher(model, X, y, kind="ggn")
    assert relative_error(F, G) < 1e-12
    assert torch.allclose(F, F.T) and torch.linalg.eigvalsh(F).min() > -1e-12


def test_chunking_does_not_change_the_result():
    model, X, y = _problem("softmax")
    for kind in ("true", "ggn", "empirical"):
        a = exact_fisher(model, X, y, kind=kind)
        b = exact_fisher(model, X, y, kind=kind, chunk_size=2)
        assert relative_error(b, a) < 1e-13


# ------------------------------------------------------ K-FAC vs curvlinops


@pytest.mark.parametrize("likelihood", ["softmax", "gaussian"])
@pytest.mark.parametrize("kind", ["type-2", "mc", "empirical"])
def test_kfac_factors_match_curvlinops(likelihood, kind):
    """Factors and the assembled block-diagonal matrix equal curvlinops'
    (separate_weight_and_bias=False, so A carries the bias' 1 last). For 'mc'
    the samples are matched: both draw one full-batch multinomial/randn per
    MC sample from a generator seeded alike (curvlinops' Gaussian draws have
    variance 1/2 because MSELoss' Hessian is 2I; same randn stream)."""
    model, X, y = _problem(likelihood, widths=(4, 5, 6, 3) if likelihood == "softmax" else (4, 5, 6, 4))
    seed, mc = 4321, 3 if kind == "mc" else 1
    op = curvlinops.KFACLinearOperator(
        model, _cl_loss(likelihood), _params(model), [(X, y)],
        fisher_type=kind, mc_samples=mc, seed=seed, separate_weight_and_bias=False,
    )  # fmt: skip
    K_cl = _dense(op, model)
    state = op.state_dict()
    scale = 1.0 if likelihood == "softmax" else (4.0 if kind == "empirical" else 2.0) * N
    ours = kfac_factors(
        model, X, y, likelihood=likelihood, kind=kind, mc_samples=mc, generator=torch.Generator().manual_seed(seed)
    )
    assert set(ours) == set(state["input_covariances"]) == {"0", "2", "4"}
    for name, (A, G) in ours.items():
        assert A.shape == state["input_covariances"][name].shape
        assert relative_error(A, state["input_covariances"][name]) < 1e-12
        assert relative_error(scale * G, state["gradient_covariances"][name]) < 1e-12
    assert relative_error(scale * kfac_matrix(model, ours), K_cl) < 1e-12


def test_kfac_mc_depends_on_the_samples_and_approaches_type2():
    model, X, y = _problem("softmax")
    gen = torch.Generator
    a = kfac_factors(model, X, kind="mc", generator=gen().manual_seed(1))
    b = kfac_factors(model, X, kind="mc", generator=gen().manual_seed(2))
    assert relative_error(a["2"][1], b["2"][1]) > 1e-2  # the draws matter
    exact = kfac_factors(model, X, kind="type-2")
    many = kfac_factors(model, X, kind="mc", mc_samples=1000, generator=gen().manual_seed(3))
    for name in exact:
        assert torch.equal(many[name][0], exact[name][0])  # A does not depend on labels
        assert relative_error(many[name][1], exact[name][1]) < 0.05  # 7000 draws: ~2% standard error


# ------------------------------------------------------- where K-FAC is exact


@pytest.mark.parametrize("likelihood", ["softmax", "gaussian"])
@pytest.mark.parametrize("bias", [True, False])
def test_single_linear_layer_one_example_kfac_equals_fisher(likelihood, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=bias)).to(DT)
    X = torch.randn(1, 4, dtype=DT)
    y = torch.tensor([2]) if likelihood == "softmax" else torch.randn(1, 3, dtype=DT)
    for kfac_kind, fisher_kind in (("type-2", "true"), ("empirical", "empirical")):
        A, G = kfac_factors(model, X, y, likelihood=likelihood, kind=kfac_kind)["0"]
        F = exact_fisher(model, X, y, likelihood=likelihood, kind=fisher_kind)
        assert A.shape == (4 + bias, 4 + bias) and G.shape == (3, 3)
        assert relative_error(kfac_block(A, G, has_bias=bias), F) < 1e-12


@pytest.mark.parametrize("likelihood", ["softmax", "gaussian"])
def test_one_example_type2_blocks_are_exact_even_with_nonlinearities(likelihood):
    """With one example the layer block is (a a^T) kron (J_s^T H J_s): Kronecker exactly."""
    model, X, y = _problem(likelihood, widths=(4, 5, 6, 3) if likelihood == "softmax" else (4, 5, 6, 4), n=1)
    K = kfac_matrix(model, kfac_factors(model, X, y, likelihood=likelihood, kind="type-2"))
    F = exact_fisher(model, X, y, likelihood=likelihood)
    assert relative_error(K, block_diagonal(F, model)) < 1e-12
    assert relative_error(K, F) > 0.05  # but the off-diagonal blocks are missing


def test_deep_linear_gaussian_type2_blocks_exact_for_many_examples():
    """Deep linear net + unit Gaussian: g_n = B^T (f - y) with B the product of
    later weights, so E[g g^T] = B^T B is the same for every example and
    mean(a a^T kron G) = A kron G exactly (Bernacchia et al., NeurIPS 2018)."""
    model, X, y = _problem("gaussian", widths=(4, 5, 3, 4), act=None, n=9)
    K = kfac_matrix(model, kfac_factors(model, X, y, likelihood="gaussian"))
    F = exact_fisher(model, X, y, likelihood="gaussian")
    assert relative_error(K, block_diagonal(F, model)) < 1e-12


@pytest.mark.parametrize("likelihood, act", [("softmax", None), ("gaussian", nn.Tanh)])
def test_kfac_not_exact_for_many_examples_otherwise(likelihood, act):
    """Softmax output Hessians vary with the example (even in a linear net), and
    nonlinearities make G_n vary: then K-FAC's 'expectation of a Kronecker product
    = Kronecker product of expectations' is an approximation."""
    model, X, y = _problem(likelihood, widths=(4, 5, 3) if likelihood == "softmax" else (4, 5, 4), act=act, n=9)
    K = kfac_matrix(model, kfac_factors(model, X, y, likelihood=likelihood))
    F = exact_fisher(model, X, y, likelihood=likelihood)
    assert relative_error(K, block_diagonal(F, model)) > 1e-3


# ------------------------------------------------------ Monte Carlo, empirical


def test_mc_fisher_within_its_standard_error():
    """hat F = (1/NM) sum_{n,m} g g^T with y ~ p(.|x_n). Its exact mean squared error
    is (1/(N^2 M)) sum_n (sum_c p_nc ||g_nc||^4 - ||F_n||_F^2) (Frobenius), computed
    here from the per-label gradients; the estimate must lie within 4 RMSEs
    (Chebyshev: a miss has probability <= 1/16; the seed is fixed)."""
    model, X, _ = _problem("softmax")
    M = 1000
    F = exact_fisher(model, X)
    est = exact_fisher(model, X, mc_samples=M, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(model(X), dim=1).detach()  # (N, C)
    C = p.shape[1]
    g = torch.stack([per_example_grads(model, X, torch.full((N,), c), "softmax") for c in range(C)], 1)  # (N, C, P)
    F_n = torch.einsum("nc,ncp,ncq->npq", p, g, g)
    mse = ((p * (g**2).sum(-1) ** 2).sum(1) - (F_n**2).sum((1, 2))).sum() / (N**2 * M)
    err = torch.linalg.norm(est - F)
    assert relative_error(F_n.mean(0), F) < 1e-12  # the per-label decomposition is right
    assert err < 4 * mse.sqrt()
    assert err > 0.05 * mse.sqrt()  # and it really is a random estimate


def test_empirical_fisher_is_not_the_fisher():
    """Kunstner et al. 2019: the empirical Fisher uses observed labels, the Fisher
    samples from the model; they differ on untrained and trained models."""
    model, X, y = _problem("softmax", widths=(4, 8, 3), n=40)
    F = exact_fisher(model, X)
    assert relative_error(exact_fisher(model, X, y, kind="empirical"), F) > 0.2
    # fit learnable labels (a linear rule) for a while: still different
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    assert nn.functional.cross_entropy(model(X), y).item() < 0.5
    F = exact_fisher(model, X)
    assert relative_error(exact_fisher(model, X, y, kind="empirical"), F) > 0.2


# ---------------------------------------------------------------- diagonals


@pytest.mark.parametrize("likelihood", ["softmax", "gaussian"])
@pytest.mark.parametrize("kind, mc", [("true", None), ("true", 5), ("ggn", None), ("empirical", None)])
def test_diag_fisher_is_the_diagonal(likelihood, kind, mc):
    model, X, y = _problem(likelihood)
    kw = {"mc_samples": mc} if mc else {}
    d = diag_fisher(model, X, y, likelihood, kind, generator=torch.Generator().manual_seed(0), **kw)
    F = exact_fisher(model, X, y, likelihood=likelihood, kind=kind, generator=torch.Generator().manual_seed(0), **kw)
    assert d.shape == (num_params(model),)
    assert torch.allclose(d, F.diagonal(), rtol=1e-12, atol=1e-14)


def test_input_validation():
    model, X, y = _problem("softmax")
    with pytest.raises(ValueError):
        exact_fisher(model, X, kind="nope")
    with pytest.raises(ValueError):
        exact_fisher(model, X, likelihood="poisson")
    with pytest.raises(ValueError):
        exact_fisher(model, X, kind="empirical")  # needs y
    with pytest.raises(ValueError):
        kfac_factors(model, X, kind="empirical")
    with pytest.raises(ValueError):
        kfac_factors(model, X, kind="true")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3)).to(DT)
    with pytest.raises(ValueError):
        kfac_matrix(conv, {"2": (torch.eye(3, dtype=DT), torch.eye(3, dtype=DT))})


def test_batch_norm_and_dropout_need_eval_mode_and_then_give_the_per_example_fisher():
    """In training mode BatchNorm couples the examples and Dropout makes each pass random: refused, saying
    why. In eval mode the empirical Fisher equals mean g_n g_n^T with each g_n from its own backward pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 3)).to(DT)
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    X = torch.randn(N, 4, dtype=DT)
    y = torch.randint(0, 3, (N,))
    for fn in (lambda: exact_fisher(model, X, y, kind="empirical"), lambda: kfac_factors(model, X, y),
               lambda: per_example_grads(model, X, y, "softmax")):
        with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) is in training mode.*model.eval\(\)"):
            fn()
    model[1].eval()
    with pytest.raises(ValueError, match=r"'3' \(Dropout\) is in training mode"):
        exact_fisher(model, X, y, kind="empirical")
    model.eval()
    params = [p for _, p in param_list(model)]
    rows = []
    for n in range(N):
        loss = nn.functional.cross_entropy(model(X[n:n + 1]), y[n:n + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    G = torch.stack(rows)
    torch.testing.assert_close(exact_fisher(model, X, y, kind="empirical"), G.T @ G / N, rtol=1e-10, atol=1e-12)


def test_inputs_that_need_a_gradient_give_the_same_matrices_without_a_graph():
    # (the graph was partial: outputs under no_grad, so d tr(F)/dX came out wrong; G of one layer kept a graph)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 3, (5,))
    Xg = X.clone().requires_grad_(True)
    for kind in ("true", "empirical", "ggn"):
        F = exact_fisher(model, Xg, y, kind=kind)
        assert not F.requires_grad
        torch.testing.assert_close(F, exact_fisher(model, X, y, kind=kind), rtol=0, atol=0)
    for name, (A, G) in kfac_factors(model, Xg, y).items():
        assert not A.requires_grad and not G.requires_grad, name


def test_a_model_with_one_output_per_example_must_say_so_with_a_column():
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0))  # (N,) outputs
    X = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"shape \(N, C\).*\(4,\).*\(N, 1\)"):
        exact_fisher(model, X, torch.randn(4), likelihood="gaussian")
