"""SOAP against a direct computation of Vyas et al.'s algorithm on one matrix (first
moment kept in the original space, as the paper writes it), independent SOAPs on
sub-blocks, and the conformance Shampoo has: parameter groups, None gradients,
skipped non-finite steps, bitwise resume, failures kept in the event log."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from natgrad.optim.soap import SOAP
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors
from natgrad.tasks.quadratic import kron_quadratic
from tests.natgrad.devices import DEVICES

WIDTHS = (64, 48, 16, 48, 64)


@pytest.fixture(scope="module")
def X():
    return load_digits_tensors()[0][:200]


def _train(model, opt, X, steps):
    for _ in range(steps):
        opt.zero_grad()
        autoencoder_loss(model(X), X).backward()
        opt.step()
    return model


def _descending_eigenvectors(S):
    return torch.linalg.eigh(S)[1].flip(-1)


def soap_by_hand(W0, grad_of, steps, lr, b1, b2, bs, eps, wd, freq, eigenbasis):
    """Vyas et al. 2024 (arXiv 2409.11321), Algorithm 3, written out for one matrix:
    M in the original space and projected each step, L and R as EMAs, the bases from
    eigh on the first call (which does not move W) and then every ``freq`` Adam steps
    by eigh or by one power iteration + QR with V permuted by the sorted eigenvalues."""
    W = W0.clone()
    G = grad_of(W)
    L, R = (1 - bs) * G @ G.T, (1 - bs) * G.T @ G
    QL, QR = _descending_eigenvectors(L), _descending_eigenvectors(R)
    M, V = torch.zeros_like(W), torch.zeros_like(W)
    for t in range(1, steps):
        G = grad_of(W)
        Gp = QL.T @ G @ QR
        M = b1 * M + (1 - b1) * G
        Mp = QL.T @ M @ QR
        V = b2 * V + (1 - b2) * Gp * Gp
        N = QL @ (Mp / (V.sqrt() + eps)) @ QR.T
        W = W - lr * (1 - b2**t) ** 0.5 / (1 - b1**t) * N
        W = W * (1 - lr * wd)
        L, R = bs * L + (1 - bs) * G @ G.T, bs * R + (1 - bs) * G.T @ G
        if t % freq == 0:
            if eigenbasis == "eigh":
                QL, QR = _descending_eigenvectors(L), _descending_eigenvectors(R)
            else:
                oL = torch.argsort(torch.diag(QL.T @ L @ QL), descending=True)
                oR = torch.argsort(torch.diag(QR.T @ R @ QR), descending=True)
                V = V[oL][:, oR]
                QL, QR = torch.linalg.qr(L @ QL[:, oL])[0], torch.linalg.qr(R @ QR[:, oR])[0]
    return W


@pytest.mark.parametrize("eigenbasis", ["qr", "eigh"])
@pytest.mark.parametrize("shape", [(6, 6), (8, 8)])
def test_soap_is_the_papers_algorithm_on_one_matrix(eigenbasis, shape):
    """Square, so that L and R from the first gradient have no zero eigenvalue: for an
    m x n matrix with m > n, L's (m - n)-fold eigenvalue 0 makes its eigenvectors there
    (and so SOAP's later steps) depend on rounding, in any implementation. In the basis
    of G_1's own factors the rotated gradient is diagonal up to rounding, and Adam divides
    those rounding errors by eps: eps = 1e-4 keeps them below the tolerance (with 1e-8
    the two computations still agree to about 1e-9)."""
    q = kron_quadratic(m=shape[0], n=shape[1], cond_left=5.0, cond_right=3.0, seed=1, dtype=torch.float64)
    hp = dict(lr=0.05, b1=0.9, b2=0.95, bs=0.9, eps=1e-4, wd=0.01, freq=3)

    def grad_of(W):
        return q.left @ (W - q.w_star) @ q.right

    steps = 20
    expected = soap_by_hand(q.weight.detach(), grad_of, steps, eigenbasis=eigenbasis, **hp)
    W = torch.nn.Parameter(q.weight.detach().clone())
    opt = SOAP([W], lr=hp["lr"], betas=(hp["b1"], hp["b2"]), shampoo_beta=hp["bs"], eps=hp["eps"],
               weight_decay=hp["wd"], precondition_frequency=hp["freq"], eigenbasis=eigenbasis)
    W0 = W.detach().clone()
    for t in range(steps):
        W.grad = grad_of(W.detach())
        opt.step()
        if t == 0:
            assert torch.equal(W.detach(), W0)  # the first call only measures
    torch.testing.assert_close(W.detach(), expected, rtol=1e-9, atol=1e-11)
    assert torch.linalg.norm(W.detach() - W0) > 0.1  # it did move
    assert opt.stats()["basis_computations"] == 2 * (1 + (steps - 1) // hp["freq"])


def test_blocks_are_independent_soaps():
    """A 10 x 7 matrix cut into blocks of at most 4 is six SOAPs on the sub-matrices."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(10, 7, dtype=torch.float64))
    kw = dict(lr=0.02, precondition_frequency=2)
    opt = SOAP([W], max_preconditioner_dim=4, **kw)
    blocks = opt.blocks()[W]
    assert [b.shape for b in blocks] == [(4, 4), (4, 3), (4, 4), (4, 3), (2, 4), (2, 3)]
    subs = [torch.nn.Parameter(W.detach()[b.slices].clone()) for b in blocks]
    sub_opts = [SOAP([s], **kw) for s in subs]
    for _ in range(7):
        G = torch.randn(10, 7, dtype=torch.float64)
        W.grad = G.clone()
        opt.step()
        for b, s, o in zip(blocks, subs, sub_opts, strict=True):
            s.grad = G[b.slices].clone()
            o.step()
    for b, s in zip(blocks, subs, strict=True):
        torch.testing.assert_close(W.detach()[b.slices], s.detach(), rtol=1e-12, atol=1e-12)


def test_vectors_get_adam_with_soaps_epsilon():
    """A bias is Adam with eps after sqrt(v) (v not bias-corrected) and the step scaled
    by sqrt(1 - b2^t) / (1 - b1^t), after the measuring first call."""
    torch.manual_seed(1)
    b = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = SOAP([b], lr=0.1, betas=(0.9, 0.99), eps=1e-3)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(6)]
    x, m, v = b.detach().clone(), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for t, g in enumerate(grads):
        b.grad = g.clone()
        opt.step()
        if t == 0:
            continue
        m, v = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g
        x = x - 0.1 * (1 - 0.99**t) ** 0.5 / (1 - 0.9**t) * m / (v.sqrt() + 1e-3)
    torch.testing.assert_close(b.detach(), x, rtol=1e-12, atol=1e-14)


def test_none_gradients_and_param_groups():
    """A parameter without a gradient keeps its value and state; groups keep their own lr."""
    lin = torch.nn.Linear(5, 3).double()
    extra = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    opt = SOAP([{"params": list(lin.named_parameters())}, {"params": [("extra", extra)], "lr": 0.0}])
    assert [b.name for bl in opt.blocks().values() for b in bl] == ["weight", "bias", "extra"]
    x = torch.randn(8, 5, dtype=torch.float64)
    e0 = extra.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        opt.step()
    assert extra.grad is None and torch.equal(extra, e0) and not opt.state[extra]
    w0 = lin.weight.detach().clone()
    extra.grad = torch.ones_like(extra)
    lin.weight.grad = None
    lin.bias.grad = torch.ones_like(lin.bias)
    opt.step()
    assert torch.equal(lin.weight, w0) and torch.equal(extra, e0)  # lr 0 group
    assert opt.state[extra]["step"] == 0 and opt.state[lin.weight]["step"] == 2


def test_nonfinite_gradient_skips_the_step(X):
    model_a, model_b = digits_autoencoder(seed=0, widths=WIDTHS), digits_autoencoder(seed=0, widths=WIDTHS)
    opt_a = SOAP(model_a.parameters(), lr=1e-3, precondition_frequency=2)
    opt_b = SOAP(model_b.parameters(), lr=1e-3, precondition_frequency=2)
    _train(model_a, opt_a, X, 3)
    _train(model_b, opt_b, X, 3)
    params = [p.detach().clone() for p in model_a.parameters()]
    state = copy.deepcopy(opt_a.state_dict()["state"])
    opt_a.zero_grad()
    autoencoder_loss(model_a(X), X).backward()
    next(model_a.parameters()).grad[0, 0] = float("inf")
    opt_a.step()
    assert opt_a.skipped_steps == 1 and opt_a.events[-1].kind == "nonfinite_grad"
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), params, strict=True))
    torch.testing.assert_close(opt_a.state_dict()["state"], state, rtol=0, atol=0)
    _train(model_a, opt_a, X, 3)
    _train(model_b, opt_b, X, 3)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))


@pytest.mark.parametrize("kw", [dict(precondition_frequency=3),
                                dict(precondition_frequency=4, eigenbasis="eigh", weight_decay=0.01,
                                     preconditioner_dtype=torch.float64, max_preconditioner_dim=40)])
def test_checkpoint_resume_is_bitwise(kw, X):
    """Stop after 7 steps (between refreshes), torch.save, load into a fresh model and
    optimizer, run 6 more: identical to never stopping (float64 factors stay float64)."""
    model = digits_autoencoder(seed=2, widths=WIDTHS)
    opt = SOAP(model.parameters(), lr=2e-3, **kw)
    _train(model, opt, X, 7)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, X, 6)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    resumed = digits_autoencoder(seed=99, widths=WIDTHS)
    resumed.load_state_dict(ckpt["model"])
    opt2 = SOAP(resumed.parameters(), lr=2e-3, **kw)
    opt2.load_state_dict(ckpt["opt"])
    if kw.get("preconditioner_dtype") is torch.float64:
        assert opt2.state[next(resumed.parameters())]["blocks"][0]["factors"][0].dtype == torch.float64
    _train(resumed, opt2, X, 6)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt2.stats()["basis_computations"] == opt.stats()["basis_computations"]


def test_failed_refresh_keeps_the_basis_and_is_logged(monkeypatch):
    """QR failing in every precision: the previous basis is kept, training goes on."""
    torch.manual_seed(3)
    W = torch.nn.Parameter(torch.randn(4, 3))
    opt = SOAP([W], lr=0.01, precondition_frequency=1)
    W.grad = torch.randn(4, 3)
    opt.step()
    bases = [Q.clone() for Q in opt.state[W]["blocks"][0]["bases"]]

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected failure")

    monkeypatch.setattr(torch.linalg, "qr", broken)
    W.grad = torch.randn(4, 3)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(bases, opt.state[W]["blocks"][0]["bases"], strict=True))
    assert opt.basis_failures == 2 and opt.events[-1].kind == "basis_failed"
    assert "previous kept" in opt.events[-1].message and torch.isfinite(W).all()


@pytest.mark.parametrize("bad", [dict(betas=(1.0, 0.9)), dict(eigenbasis="svd"), dict(precondition_frequency=0),
                                 dict(lr=-1.0), dict(shampoo_beta=1.5)])
def test_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        SOAP([torch.nn.Parameter(torch.zeros(2, 2))], **bad)


@pytest.mark.parametrize("device", DEVICES)
def test_trains_the_same_on_every_available_device(device, X):
    """State on the device and the same losses as on the CPU, loosely: a 48 x 64 gradient
    leaves 16 zero eigenvalues in R, whose eigenvectors each device's eigensolver picks
    differently, and Adam in that basis then takes (equally valid) different steps."""
    losses = []
    for dev in ("cpu", device):
        model = digits_autoencoder(seed=0, widths=WIDTHS).to(dev)
        opt = SOAP(model.parameters(), lr=1e-3, precondition_frequency=2)
        _train(model, opt, X.to(dev), 6)
        assert all(t.device.type == dev for p in model.parameters() for b in opt.state[p]["blocks"].values()
                   for t in b["factors"] + b["bases"])
        losses.append(float(autoencoder_loss(model(X.to(dev)), X.to(dev)).detach()))
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
