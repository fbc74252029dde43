"""Shampoo against independent answers: torch.optim before preconditioning starts
(bit for bit), scipy's fractional matrix powers, explicit Kronecker products, a
quadratic whose Newton step Shampoo must take exactly, the cost formulas of
natgrad.costs, a mocked eigensolver, and an uninterrupted run (checkpoints)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import scipy.linalg
import torch

from natgrad.costs import shampoo_memory
from natgrad.optim.linalg import RootComputationError, matrix_inverse_root, safe_eigh
from natgrad.optim.shampoo import blocks as sb
from natgrad.optim.shampoo.optimizer import Shampoo
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors

WIDTHS = (64, 48, 16, 48, 64)  # a small autoencoder: fast, still 8 tensors of 4 shapes


@pytest.fixture(scope="module")
def X():
    return load_digits_tensors()[0][:200]  # (200, 64)


def _train(model, opt, X, steps):
    for _ in range(steps):
        opt.zero_grad()
        autoencoder_loss(model(X), X).backward()
        opt.step()
    return model


# ------------------------------------------------------------------ grafting
GRAFT_CASES = {
    "adam": (dict(beta1=0.9, grafting="adam", graft_beta2=0.999, graft_eps=1e-8),
             lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.999), eps=1e-8)),
    "adamw": (dict(beta1=0.9, grafting="adam", graft_beta2=0.99, graft_eps=1e-7, weight_decay=0.1),
              lambda p, lr: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.1)),
    "adam-l2": (dict(beta1=0.8, grafting="adam", weight_decay=0.1, decoupled_weight_decay=False),
                lambda p, lr: torch.optim.Adam(p, lr=lr, betas=(0.8, 0.999), weight_decay=0.1)),
    "adagrad": (dict(beta1=0.0, grafting="adagrad", graft_eps=1e-10),
                lambda p, lr: torch.optim.Adagrad(p, lr=lr, eps=1e-10, initial_accumulator_value=0.0)),
    "rmsprop": (dict(beta1=0.0, grafting="rmsprop", graft_beta2=0.99, graft_eps=1e-8),
                lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.99, eps=1e-8)),
    "sgd": (dict(beta1=0.0, grafting="sgd"), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    "sgd-momentum": (dict(beta1=0.0, grafting="sgd", momentum=0.9, weight_decay=0.01, decoupled_weight_decay=False),
                     lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.01)),
}


@pytest.mark.parametrize("case", GRAFT_CASES)
def test_graft_before_preconditioning_is_torch_optimizer_bit_for_bit(case, X):
    """Before ``start_preconditioning_step`` the update is the graft, computed
    with the same floating-point operations as torch.optim (torch.equal)."""
    kwargs, make_ref = GRAFT_CASES[case]
    lr = 0.05 if case.startswith("sgd") else 3e-3
    model_a, model_b = digits_autoencoder(seed=1, widths=WIDTHS), digits_autoencoder(seed=1, widths=WIDTHS)
    ours = Shampoo(model_a.parameters(), lr=lr, start_preconditioning_step=10**9, **kwargs)
    _train(model_a, ours, X, 12)
    _train(model_b, make_ref(model_b.parameters(), lr), X, 12)
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert ours.stats()["root_computations"] == 0


# ------------------------------------------------------------------ roots
def _spd(d, cond, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    lam = torch.logspace(0, -np.log10(cond), d, dtype=dtype)
    return Q @ torch.diag(lam) @ Q.T


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("cond", [1e1, 1e4, 1e8])
def test_inverse_root_matches_scipy(p, cond):
    """M^{-1/p} from eigh vs scipy's Schur-Pade fractional power, fp64. Both are
    backward stable, so they agree to about eps_mach * cond / p (first-order
    perturbation of the smallest eigenvalue); we allow 1e-14 * cond."""
    M = _spd(24, cond, seed=p)
    root, event = matrix_inverse_root(M, p, 0.0)
    ref = torch.from_numpy(np.real(scipy.linalg.fractional_matrix_power(M.numpy(), -1.0 / p)))
    assert event is None
    assert ((root - ref).norm() / ref.norm()).item() < 1e-14 * cond + 1e-13


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_epsilon_conventions(mode):
    """absolute: (M + eps I)^{-1/p}; relative: (M + eps lambda_max I)^{-1/p}, so
    scaling M by c scales the root by c^{-1/p} exactly."""
    M = _spd(10, 1e6, seed=3) * 7.0
    eps = 1e-3
    shift = eps if mode == "absolute" else eps * torch.linalg.eigvalsh(M).max().item()
    ref = scipy.linalg.fractional_matrix_power((M + shift * torch.eye(10, dtype=M.dtype)).numpy(), -0.25)
    root, _ = matrix_inverse_root(M, 4, eps, epsilon_mode=mode)
    torch.testing.assert_close(root, torch.from_numpy(np.real(ref)), rtol=1e-10, atol=1e-12)
    if mode == "relative":
        torch.testing.assert_close(matrix_inverse_root(M * 1e4, 4, eps, epsilon_mode=mode)[0], root * 1e-1)


def test_singular_statistic_with_zero_epsilon_keeps_previous():
    """eps = 0 on a singular statistic gives an infinite root: the previous root is
    returned (or an error raised when there is none)."""
    M = torch.zeros(3, 3, dtype=torch.float64)
    prev = torch.eye(3, dtype=torch.float64) * 5
    root, event = matrix_inverse_root(M, 4, 0.0, previous=prev)
    assert root is prev and event.endswith("previous kept")
    with pytest.raises(RootComputationError):
        matrix_inverse_root(M, 4, 0.0)


# ------------------------------------------------------- tensors and blocks
def test_order3_tensor_statistics_and_direction_are_kronecker_products():
    """For an order-3 block: S_i = G_(i) G_(i)^T (contract over the other modes),
    root exponent -1/6, and the direction is (R_1 kron R_2 kron R_3) vec(M),
    checked with explicit Kronecker products; EMA statistics with their closed form."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(3, 4, 5, dtype=torch.float64))
    opt = Shampoo([W], lr=0.1, beta1=0.0, grafting=None, statistics="ema", beta2=0.9, epsilon=1e-3)
    grads = [torch.randn(3, 4, 5, dtype=torch.float64) for _ in range(2)]
    Ws = [W.detach().clone()]
    for g in grads:
        W.grad = g.clone()
        opt.step()
        Ws.append(W.detach().clone())
    st = opt.state[W]["blocks"][0]
    for i, S in enumerate(st["factors"]):
        unf = [x.movedim(i, 0).reshape(x.shape[i], -1) for x in grads]  # mode-i unfoldings
        torch.testing.assert_close(S, 0.9 * 0.1 * unf[0] @ unf[0].T + 0.1 * unf[1] @ unf[1].T)
    bc = 1 - 0.9**2  # bias correction of the EMA
    R = [torch.from_numpy(np.real(scipy.linalg.fractional_matrix_power(
        (S / bc + 1e-3 * torch.eye(S.shape[0], dtype=S.dtype)).numpy(), -1 / 6))) for S in st["factors"]]
    K = torch.kron(torch.kron(R[0], R[1]), R[2])  # (60, 60), acting on row-major vec
    direction = (Ws[1] - Ws[2]) / 0.1  # the second step's direction
    torch.testing.assert_close(direction.reshape(-1), K @ grads[1].reshape(-1), rtol=1e-9, atol=1e-12)


def test_blocks_equal_independent_shampoos_and_memory_matches_costs():
    """A 10 x 7 matrix with max_preconditioner_dim=4 is six blocks; each block's
    update equals Shampoo run on that sub-matrix alone, and the bytes equal
    natgrad.costs.shampoo_memory (an independent formula) and what is allocated."""
    torch.manual_seed(1)
    W = torch.nn.Parameter(torch.randn(10, 7))
    kw = dict(lr=0.01, precondition_frequency=2, start_preconditioning_step=2)
    opt = Shampoo([W], max_preconditioner_dim=4, **kw)
    blocks = opt.blocks()[W]
    assert [b.shape for b in blocks] == [(4, 4), (4, 3), (4, 4), (4, 3), (2, 4), (2, 3)]
    for _ in range(2):
        W.grad = torch.randn(10, 7)
        opt.step()
    # grafting is per tensor (one scale for all blocks), so compare blocks with grafting off
    opt_ng = Shampoo([Wn := torch.nn.Parameter(W.detach().clone())], max_preconditioner_dim=4, grafting=None, **kw)
    subs_ng = [torch.nn.Parameter(Wn.detach()[b.slices].clone()) for b in blocks]
    sub_ng = [Shampoo([s], grafting=None, **kw) for s in subs_ng]
    for _ in range(4):
        G = torch.randn(10, 7)
        Wn.grad = G.clone()
        opt_ng.step()
        for b, s, o in zip(blocks, subs_ng, sub_ng, strict=True):
            s.grad = G[b.slices].clone()
            o.step()
    for b, s in zip(blocks, subs_ng, strict=True):
        torch.testing.assert_close(Wn.detach()[b.slices], s.detach(), rtol=1e-5, atol=1e-6)
    mem = shampoo_memory(10, 7, block_size=4)
    assert opt.preconditioner_bytes() == mem.total_bytes
    held = sum(sb.block_state_bytes(st) for st in opt.state[W]["blocks"].values())
    assert held == mem.total_bytes


def test_preconditioner_bytes_of_the_autoencoder(X):
    """Matrices: 2 (m^2 + n^2) fp32 numbers (costs.shampoo_memory); biases: one diagonal."""
    model = digits_autoencoder(seed=0, widths=WIDTHS)
    opt = Shampoo(model.parameters(), lr=1e-3)
    _train(model, opt, X, 1)
    expected = sum(shampoo_memory(*p.shape).total_bytes if p.dim() == 2 else 4 * p.numel()
                   for p in model.parameters())
    held = sum(sb.block_state_bytes(b) for p in model.parameters() for b in opt.state[p]["blocks"].values())
    assert opt.preconditioner_bytes() == expected == held
    assert opt.stats()["num_blocks"] == 8 and opt.stats()["num_diagonal_blocks"] == 4


# --------------------------------------------------------- Kronecker quadratic
def _kron_problem(seed=0, n=6, c=0.7):
    g = torch.Generator().manual_seed(seed)
    a = torch.logspace(0, 1.5, n, dtype=torch.float64)  # the spectrum shared by A and B
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A, B = U @ torch.diag(a) @ U.T, V @ torch.diag(a) @ V.T
    W_star = torch.randn(n, n, generator=g, dtype=torch.float64)
    E0 = c * torch.linalg.solve(A, U @ V.T)  # c A^{-1} U V^T
    return A, B, W_star, W_star + E0


def _loss(W, A, B, W_star):
    E = W - W_star
    return 0.5 * torch.trace(E.T @ A @ E @ B)


def test_exponent_half_takes_the_newton_step_on_a_kronecker_quadratic():
    r"""f(W) = 1/2 tr(E^T A E B), E = W - W*, has gradient G = A E B and Hessian
    B kron A. Start at E_0 = c A^{-1} U V^T where A = U diag(a) U^T and
    B = V diag(a) V^T share a spectrum. Then G_0 = c U diag(a) V^T, so Shampoo's
    first statistics are L = G G^T = c^2 A^2 and R = G^T G = c^2 B^2: the squares
    of the Hessian's Kronecker factors. With exponent -1/2 per factor
    (Morwani et al. 2025) the direction is L^{-1/2} G R^{-1/2} = A^{-1} G B^{-1} / c^2,
    the Newton direction over c^2, so lr = c^2 reaches W* in exactly one step.
    The default -1/4 gives c^{-1} U V^T instead (the polar factor of G), not
    the Newton direction: even the best step length along it leaves a loss > 1% of f(W_0)."""
    A, B, W_star, W0 = _kron_problem()
    c = 0.7
    W = torch.nn.Parameter(W0.clone())
    opt = Shampoo([W], lr=c**2, beta1=0.0, grafting=None, exponent_override=2, epsilon=0.0,
                  start_preconditioning_step=1)
    loss0 = _loss(W0, A, B, W_star)
    W.grad = A @ (W0 - W_star) @ B
    opt.step()
    torch.testing.assert_close(W.detach(), W_star, rtol=0, atol=1e-10)
    assert _loss(W.detach(), A, B, W_star) < 1e-20 * loss0

    W4 = torch.nn.Parameter(W0.clone())
    opt4 = Shampoo([W4], lr=1.0, beta1=0.0, grafting=None, epsilon=0.0, start_preconditioning_step=1)
    W4.grad = A @ (W0 - W_star) @ B
    opt4.step()
    D = W0 - W4.detach()  # the -1/4 direction (lr = 1)
    G = A @ (W0 - W_star) @ B
    best = torch.sum(G * D) / torch.trace(D.T @ A @ D @ B)  # exact line search on the quadratic
    assert _loss(W0 - best * D, A, B, W_star) > 1e-2 * loss0


# -------------------------------------------------------- failures and NaNs
def _eigh_failing(real, when):
    def eigh(M, *args, **kwargs):
        if when(M):
            raise torch.linalg.LinAlgError("injected failure")
        return real(M, *args, **kwargs)
    return eigh


def test_fp32_failure_retries_in_fp64(monkeypatch):
    real = torch.linalg.eigh
    M = _spd(8, 1e3, seed=5, dtype=torch.float32)
    monkeypatch.setattr(torch.linalg, "eigh", _eigh_failing(real, lambda M: M.dtype == torch.float32))
    w, U, event = safe_eigh(M)
    w64, U64 = real(M.double())
    assert event.startswith("fp64 retry") and w.dtype == torch.float32
    assert torch.equal(w, w64.float()) and torch.equal(U, U64.float())

    model = digits_autoencoder(seed=0, widths=WIDTHS)
    opt = Shampoo(model.parameters(), lr=1e-3, start_preconditioning_step=1)
    X = load_digits_tensors()[0][:50]
    _train(model, opt, X, 2)
    assert opt.fp64_retries == opt.root_computations == 16 and opt.root_failures == 0
    assert all("fp64 retry" in e.message for e in opt.events)


def test_persistent_failure_keeps_previous_roots_and_training_continues(monkeypatch, X):
    model = digits_autoencoder(seed=0, widths=WIDTHS)
    opt = Shampoo(model.parameters(), lr=1e-3, precondition_frequency=2, start_preconditioning_step=2)
    _train(model, opt, X, 3)  # roots computed at step 2
    roots = {(id(p), k): [r.clone() for r in b["roots"]] for p in model.parameters()
             for k, b in opt.state[p]["blocks"].items() if "roots" in b}
    monkeypatch.setattr(torch.linalg, "eigh", _eigh_failing(torch.linalg.eigh, lambda M: True))
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, X, 3)  # steps 4 and 6 recompute 4 matrices x 2 factors: every eigh fails
    assert opt.root_failures == 16 and sum("previous kept" in e.message for e in opt.events) == 16
    for p in model.parameters():
        for k, b in opt.state[p]["blocks"].items():
            if "roots" in b:
                assert all(torch.equal(r, r0) for r, r0 in zip(b["roots"], roots[(id(p), k)], strict=True))
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before,
                                                                                  strict=True))


def test_nonfinite_eigh_output_counts_as_failure(monkeypatch):
    nan_eigh = lambda M, *a, **k: (torch.full(M.shape[:-1], float("nan"), dtype=M.dtype),  # noqa: E731
                                   torch.full(M.shape, float("nan"), dtype=M.dtype))
    monkeypatch.setattr(torch.linalg, "eigh", nan_eigh)
    prev = (torch.ones(3), torch.eye(3))
    w, U, event = safe_eigh(torch.eye(3), previous=prev)
    assert w is prev[0] and U is prev[1] and event.endswith("previous kept")
    with pytest.raises(RootComputationError, match="no previous"):
        safe_eigh(torch.eye(3))


def test_nan_gradient_step_is_skipped_entirely(X):
    """Documented behaviour: a step with a NaN/inf gradient changes nothing
    (parameters, state, step count) and is counted; later steps proceed as if
    it never happened."""
    model_a, model_b = digits_autoencoder(seed=0, widths=WIDTHS), digits_autoencoder(seed=0, widths=WIDTHS)
    kw = dict(lr=1e-3, precondition_frequency=2, start_preconditioning_step=2)
    opt_a, opt_b = Shampoo(model_a.parameters(), **kw), Shampoo(model_b.parameters(), **kw)
    _train(model_a, opt_a, X, 3)
    _train(model_b, opt_b, X, 3)
    params = [p.detach().clone() for p in model_a.parameters()]
    state = copy.deepcopy(opt_a.state_dict()["state"])
    opt_a.zero_grad()
    autoencoder_loss(model_a(X), X).backward()
    next(model_a.parameters()).grad[0, 0] = float("nan")
    opt_a.step()
    assert opt_a.skipped_steps == 1 and "non-finite gradient in parameter(s) [0]" in opt_a.events[-1].message
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), params, strict=True))
    assert opt_a.state_dict()["state"][0]["step"] == state[0]["step"] == 3
    torch.testing.assert_close(opt_a.state_dict()["state"], state, rtol=0, atol=0)
    _train(model_a, opt_a, X, 3)
    _train(model_b, opt_b, X, 3)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))


# ------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("kw", [
    dict(precondition_frequency=3, start_preconditioning_step=2),
    dict(precondition_frequency=4, statistics="ema", beta2=0.95, momentum=0.5, weight_decay=0.01,
         preconditioner_dtype=torch.float64, max_preconditioner_dim=40, grafting="rmsprop"),
])
def test_checkpoint_resume_is_bitwise(kw, X):
    """Stop after 7 steps (between root computations), save with torch.save, load
    into a fresh model and optimizer, run 6 more: identical to never stopping."""
    model = digits_autoencoder(seed=2, widths=WIDTHS)
    opt = Shampoo(model.parameters(), lr=2e-3, **kw)
    _train(model, opt, X, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, X, 6)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    resumed = digits_autoencoder(seed=99, widths=WIDTHS)
    resumed.load_state_dict(ckpt["model"])
    opt2 = Shampoo(resumed.parameters(), lr=2e-3, **kw)
    opt2.load_state_dict(ckpt["opt"])
    if kw.get("preconditioner_dtype") is torch.float64:
        st = opt2.state[next(resumed.parameters())]["blocks"][0]
        assert st["factors"][0].dtype == torch.float64 and st["roots"][0].dtype == torch.float64
    _train(resumed, opt2, X, 6)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt2.stats()["root_computations"] == opt.stats()["root_computations"]


def same_state(a, b) -> bool:
    """Nested optimizer states equal: same keys, same tensors (torch.equal), same numbers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_add_param_group_keeps_state_and_equals_one_optimizer_from_the_start(X):
    """Shampoo over the encoder, the decoder added as a group after 5 steps, equals one
    Shampoo over both groups from the start whose decoder has no gradients for those
    5 steps (a parameter without a gradient is skipped, as in torch.optim): existing
    statistics, roots, moments and step counts survive add_param_group."""
    kw = dict(lr=3e-3, precondition_frequency=2, start_preconditioning_step=1, max_preconditioner_dim=20)
    models = [digits_autoencoder(seed=0, widths=WIDTHS) for _ in range(2)]
    late = Shampoo(models[0][:3].parameters(), **kw)
    early = Shampoo([{"params": models[1][:3].parameters()}, {"params": models[1][3:].parameters(), "lr": 2e-3}],
                    **kw)
    for t in range(11):
        if t == 5:
            before = copy.deepcopy(late.state_dict()["state"])
            late.add_param_group({"params": list(models[0][3:].parameters()), "lr": 2e-3})
            after = late.state_dict()["state"]
            assert same_state(before, after)
            assert all(torch.equal(late.state[p]["blocks"][0]["roots"][0], early.state[q]["blocks"][0]["roots"][0])
                       for p, q in zip(models[0][:3].parameters(), models[1][:3].parameters(), strict=True)
                       if p.dim() == 2)
        for model, opt in zip(models, (late, early), strict=True):
            opt.zero_grad()
            autoencoder_loss(model(X), X).backward()
            if t < 5:
                for p in model[3:].parameters():
                    p.grad = None
            opt.step()
    assert [b.key for bl in late.blocks().values() for b in bl] == [b.key for bl in early.blocks().values() for b in bl]
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("max_dim", [1024, 10])
def test_tensors_as_matrix_is_shampoo_on_the_reshaped_parameter(max_dim):
    """tensors="matrix": a convolution kernel (8, 3, 3, 3) is preconditioned exactly as
    Shampoo preconditions the (8, 27) matrix parameter that the same convolution reads
    through a view (with max_dim 10: the 27 columns in blocks 0:10, 10:20, 20:27)."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 6, 6, dtype=torch.float64)
    y = torch.randn(16, 8, 6, 6, dtype=torch.float64)
    w0, b0 = torch.randn(8, 3, 3, 3, dtype=torch.float64) / 5, torch.zeros(8, dtype=torch.float64)
    kernel = torch.nn.Parameter(w0.clone())  # (8, 3, 3, 3)
    matrix = torch.nn.Parameter(w0.reshape(8, 27).clone())  # (8, 27)
    modes = torch.nn.Parameter(w0.clone())
    biases = [torch.nn.Parameter(b0.clone()) for _ in range(3)]
    kw = dict(lr=1e-2, precondition_frequency=2, start_preconditioning_step=1, max_preconditioner_dim=max_dim,
              exponent_override=2)
    opts = [Shampoo([kernel, biases[0]], tensors="matrix", **kw), Shampoo([matrix, biases[1]], **kw),
            Shampoo([modes, biases[2]], tensors="modes", **kw)]
    weights = [kernel, matrix, modes]  # each read as an (8, 3, 3, 3) kernel below
    for _ in range(8):
        for opt, w, b in zip(opts, weights, biases, strict=True):
            opt.zero_grad()
            out = torch.nn.functional.conv2d(x, w.view(8, 3, 3, 3), b, padding=1)
            ((out - y) ** 2).mean().backward()
            opt.step()
    assert torch.equal(kernel.reshape(8, 27), matrix) and torch.equal(biases[0], biases[1])
    assert (kernel - modes).abs().max() > 1e-4  # the two layouts do differ
    shapes = [[b.shape for b in opt.blocks()[p]] for opt, p in zip(opts, (kernel, matrix, modes), strict=True)]
    assert shapes[0] == shapes[1] == ([(8, 27)] if max_dim == 1024 else [(8, 10), (8, 10), (8, 7)])
    assert shapes[2] == ([(8, 3, 3, 3)] if max_dim == 1024 else [(8, 3, 3, 3)])
    with pytest.raises(ValueError, match="tensors must be one of"):
        Shampoo([kernel], tensors="blocks")


@pytest.mark.parametrize("case", ["adam", "rmsprop", "sgd-momentum"])
def test_skipped_parameters_take_the_graft_step_alone(case):
    """skip_preconditioning_rank_lt=2: vectors keep no statistics and are updated exactly as
    the graft's torch optimizer updates them (torch.equal, given the same gradients), while
    the matrices are still preconditioned (their steps differ from the graft's)."""
    kwargs, make_ref = GRAFT_CASES[case]
    lr = 0.05 if case.startswith("sgd") else 3e-3
    g = torch.Generator().manual_seed(0)
    grads = [(torch.randn(6, 5, generator=g), torch.randn(6, generator=g)) for _ in range(12)]
    (w_a, b_a), (w_b, b_b) = [[torch.nn.Parameter(torch.ones(6, 5)), torch.nn.Parameter(torch.ones(6))]
                              for _ in range(2)]
    ours = Shampoo([w_a, b_a], lr=lr, start_preconditioning_step=1, skip_preconditioning_rank_lt=2, **kwargs)
    ref = make_ref([w_b, b_b], lr)
    for gw, gb in grads:
        for w, b, opt in ((w_a, b_a, ours), (w_b, b_b, ref)):
            w.grad, b.grad = gw.clone(), gb.clone()
            opt.step()
    assert torch.equal(b_a, b_b) and not torch.allclose(w_a, w_b)
    assert ours.blocks()[b_a] == [] and ours.state[b_a]["blocks"] == {}
    assert ours.preconditioner_bytes() == 4 * (6 * 6 + 5 * 5) * 2  # the weight's two factors and roots only


# ------------------------------------------------------------------ surface
def test_param_groups_names_zero_dim_and_fp64():
    """Named parameters label blocks; groups keep their own hyper-parameters; a
    0-D parameter is a 1-element diagonal block; float64 stays float64."""
    lin = torch.nn.Linear(5, 3).double()
    s = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    named = list(lin.named_parameters()) + [("scale", s)]
    opt = Shampoo([{"params": named[:1], "lr": 0.01}, {"params": named[1:], "lr": 0.0}], start_preconditioning_step=1)
    names = [b.name for bl in opt.blocks().values() for b in bl]
    assert names == ["weight", "bias", "scale"]
    x = torch.randn(4, 5, dtype=torch.float64)
    b0, s0 = lin.bias.detach().clone(), s.detach().clone()
    w0 = lin.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        (lin(x) * s).pow(2).sum().backward()
        opt.step()
    assert torch.equal(lin.bias, b0) and torch.equal(s, s0)  # lr 0 group
    assert not torch.equal(lin.weight, w0) and lin.weight.dtype == torch.float64
    assert opt.state[s]["blocks"][0]["diag"].shape == (1,)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_an_empty_parameter_changes_nothing(mode):
    """A 0-element parameter (a bias of width 0) sits among the diagonal blocks
    without changing the other parameters' steps by a single bit."""
    torch.manual_seed(0)
    w0, b0, c0 = torch.randn(4, 3), torch.randn(4), torch.randn(3)
    x = torch.randn(6, 3)

    def train(with_empty: bool):
        w, b, c = (torch.nn.Parameter(t.clone()) for t in (w0, b0, c0))
        e = torch.nn.Parameter(torch.zeros(0))
        opt = Shampoo([w, b, e, c] if with_empty else [w, b, c], lr=0.05, start_preconditioning_step=1,
                      epsilon=1e-4, epsilon_mode=mode)
        for _ in range(5):
            opt.zero_grad()
            (torch.tanh(x @ w.T + b).sum(0) @ c[:1].expand(4) + e.sum() + (c**2).sum()).backward()
            opt.step()
        return w, b, c, e

    *with_e, e = train(True)
    for p, q in zip(with_e, train(False)[:3], strict=True):
        assert torch.equal(p, q)
    assert e.shape == (0,)


@pytest.mark.parametrize("bad", [dict(grafting="lion"), dict(statistics="max"), dict(epsilon_mode="x"), dict(tensors="x"),
                                 dict(beta1=1.0), dict(precondition_frequency=0), dict(exponent_override=-2)])
def test_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        Shampoo([torch.nn.Parameter(torch.zeros(2, 2))], **bad)


def _devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


@pytest.mark.parametrize("device", _devices())
def test_runs_on_every_available_device(device, X):
    """Same trajectory on the accelerator as on the CPU (loose tolerance: other kernels)."""
    runs = []
    for dev in ("cpu", device):
        model = digits_autoencoder(seed=0, widths=WIDTHS).to(dev)
        opt = Shampoo(model.parameters(), lr=1e-3, precondition_frequency=2, start_preconditioning_step=2)
        _train(model, opt, X.to(dev), 6)
        assert all(t.device.type == dev for p in model.parameters() for b in opt.state[p]["blocks"].values()
                   for t in ([b["diag"]] if "diag" in b else b["factors"] + b["roots"]))
        runs.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_the_root_of_an_empty_matrix_is_empty_in_either_epsilon_mode(mode):
    # (the relative mode took the largest of no eigenvalues: IndexError)
    root, event = matrix_inverse_root(torch.zeros(0, 0), 2, 1e-6, epsilon_mode=mode)
    assert root.shape == (0, 0) and event is None
