"""Sophia against independent answers: the authors' SophiaG (sophia-opt 0.2.2) step for
step in float64, the update rule written out by hand, and an uninterrupted run
(checkpoints); param groups, None and non-finite gradients, statistics, devices."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.nn import functional as F

from natgrad.optim import Sophia, SophiaStepper
from natgrad.tasks.chars import char_transformer, sequence_cross_entropy
from tests.natgrad.models import mlp

sophia_opt = pytest.importorskip("sophia_opt")


def _data(n=64, d=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _theirs_step(model, opt, x, y, t, k, gen, bs, loss_fn=F.cross_entropy):
    """One iteration of the authors' recipe in the paper's order: every k steps (t = 0, k, 2k, ...)
    the gradient of the loss on labels sampled from the model goes into update_hessian; then the
    real loss's gradient into step(bs)."""
    opt.zero_grad()
    if t % k == 0:
        logits = model(x)
        p = torch.softmax(logits.detach().reshape(-1, logits.shape[-1]), 1)
        labels = p.multinomial(1, generator=gen).reshape(logits.shape[:-1])
        loss_fn(logits, labels).backward()
        opt.update_hessian()
        opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step(bs=bs)


@pytest.mark.parametrize("k", [3, 10])
@pytest.mark.parametrize("hp", [dict(lr=1e-2, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1),
                                dict(lr=1e-2, betas=(0.9, 0.8), rho=1.0, weight_decay=0.1)], ids=["defaults", "unclipped"])
def test_sophia_g_takes_the_steps_of_the_authors_sophiag(k, hp):
    """Same model, data, batches, sampled labels and hyper-parameters: our SophiaStepper
    (estimate B g^2, denominator max(rho h, eps)) and sophia_opt.SophiaG (EMA of g^2,
    denominator rho bs h + 1e-15) agree to 1e-10 for 30 steps in float64."""
    X, Y = _data()
    ours_model, their_model = mlp((8, 16, 5), seed=1), mlp((8, 16, 5), seed=1)
    ours = SophiaStepper(ours_model, F.cross_entropy, "softmax", estimator="gnb", update_period=k, seed=7, **hp)
    theirs = sophia_opt.SophiaG(their_model.parameters(), **hp)
    gen, batches = torch.Generator().manual_seed(7), torch.Generator().manual_seed(3)
    clipped = []
    for t in range(30):
        idx = torch.randint(0, 64, (16,), generator=batches)
        ours.step(X[idx], Y[idx])
        _theirs_step(their_model, theirs, X[idx], Y[idx], t, k, gen, bs=16)
        clipped.append(ours.stats()["clipped_fraction"])
        for p, q in zip(ours_model.parameters(), their_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    assert ours.optimizer.hessian_updates == len(range(0, 30, k))
    if hp["rho"] == 1.0:  # both branches of the clip were taken
        assert 0.2 < min(clipped) and max(clipped) < 0.9


def test_sequence_outputs_sample_one_label_per_position():
    """A (B, T, V) language model: labels are sampled for all B T positions and B counts
    them, as the authors' training script does (bs = tokens per step). 25 steps in float64.

    One direction is excluded from the parameter comparison: the attention's key bias adds
    the same q.b to every score of a query, so the softmax cancels it and its gradient and
    curvature are pure rounding noise (1e-22) that both implementations divide by the
    1e-15 floor differently. The logits, which it cannot change, are compared instead."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 97, (6, 8), generator=g), torch.randint(0, 97, (6, 8), generator=g)
    sizes = dict(context=8, width=8, heads=2, layers=1)
    ours_model = char_transformer(seed=3, **sizes).double()
    their_model = char_transformer(seed=3, **sizes).double()
    hp = dict(lr=3e-3, betas=(0.9, 0.9), rho=0.5, weight_decay=0.1)
    ours = SophiaStepper(ours_model, sequence_cross_entropy, "softmax", update_period=4, seed=5, **hp)
    theirs = sophia_opt.SophiaG(their_model.parameters(), **hp)
    gen = torch.Generator().manual_seed(5)
    for t in range(25):
        ours.step(x, y)
        _theirs_step(their_model, theirs, x, y, t, 4, gen, bs=6 * 8, loss_fn=sequence_cross_entropy)
    for (name, p), q in zip(ours_model.named_parameters(), their_model.parameters(), strict=True):
        if name == "blocks.0.qkv.bias":
            p, q = torch.cat([p[:8], p[16:]]), torch.cat([q[:8], q[16:]])  # without the key bias [8:16]
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(ours_model(x), their_model(x), rtol=0, atol=1e-10)
    assert 0 < ours.stats()["clipped_fraction"] < 1


def test_one_step_by_hand():
    """theta <- (1 - lr wd) theta - lr clip(m / max(rho h, eps), 1) with m = (1 - b1) g at step 1:
    a sharp coordinate (Newton-like), a flat one (clipped), a concave one (h < 0: sign step) and
    one with a tiny gradient and zero curvature (the eps floor)."""
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64))
    lr, b1, rho, wd, eps = 0.01, 0.9, 0.1, 0.2, 1e-12
    opt = Sophia([theta], lr=lr, betas=(b1, 0.5), rho=rho, weight_decay=wd, eps=eps)
    h_hat = torch.tensor([5.0, 0.01, -4.0, 0.0], dtype=torch.float64)
    assert opt.hessian_due()
    opt.update_hessian([h_hat])
    assert not opt.hessian_due()
    theta.grad = torch.tensor([0.03, 0.03, 0.03, 1e-14], dtype=torch.float64)
    opt.step()
    m = 0.1 * theta.grad
    h = 0.5 * h_hat
    ratio = m / torch.clamp(rho * h, min=eps)
    expected = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64) * (1 - lr * wd) - lr * ratio.clamp(-1, 1)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-15, atol=0)
    # by value: 0.003 / 0.25 = 0.012 (unclipped); 0.003 / 0.0005 = 6 -> 1; h < 0 -> 1; 1e-15 / 1e-12 = 1e-3
    torch.testing.assert_close(ratio.clamp(max=1), torch.tensor([0.012, 1.0, 1.0, 1e-3], dtype=torch.float64))
    s = opt.stats()
    assert s["clipped_fraction"] == 0.5
    assert s["step_norm"] == pytest.approx(lr * float(ratio.clamp(max=1).norm()), rel=1e-12)
    assert s["hessian_mean"] == pytest.approx(float(h.mean())) and s["hessian_negative"] == 0.25
    assert opt.state[theta]["step"] == 1 and opt.steps == 1


def test_refresh_schedule_is_steps_1_k_plus_1():
    theta = torch.nn.Parameter(torch.zeros(3))
    opt = Sophia([theta], update_period=4)
    due = []
    for _ in range(10):
        due.append(opt.hessian_due())
        if due[-1]:
            opt.update_hessian([torch.ones(3)])
        theta.grad = torch.ones(3)
        opt.step()
    assert due == [True, False, False, False, True, False, False, False, True, False]


def test_param_groups_and_none_gradients():
    """Groups keep their own lr and rho; a parameter without a gradient is neither moved nor
    given state; a group with lr 0 stays put."""
    a, b, c = (torch.nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(3))
    opt = Sophia([{"params": [a], "lr": 0.1, "rho": 1.0}, {"params": [b], "lr": 0.0}, {"params": [c]}],
                 lr=0.01, betas=(0.0, 0.0), weight_decay=0.0)
    opt.update_hessian([torch.full((3,), 0.2, dtype=torch.float64)] * 3)
    a.grad = torch.full((3,), 0.1, dtype=torch.float64)
    b.grad = torch.full((3,), 0.1, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), 1 - 0.1 * 0.1 / 0.2, dtype=torch.float64))  # unclipped
    assert torch.equal(b, torch.ones(3, dtype=torch.float64)) and torch.equal(c, torch.ones(3, dtype=torch.float64))
    assert opt.state[c]["step"] == 0 and opt.state[a]["step"] == 1  # c: only its curvature was initialised


def _stepper(model, estimator, **kw):
    return SophiaStepper(model, F.cross_entropy, "softmax", estimator=estimator, lr=3e-2, betas=(0.9, 0.9), rho=0.3,
                         update_period=3, seed=11, **kw)


def _train(stepper, X, Y, steps, gen):
    for _ in range(steps):
        idx = torch.randint(0, X.shape[0], (16,), generator=gen)
        stepper.step(X[idx], Y[idx])


@pytest.mark.parametrize("estimator", ["gnb", "hutchinson"])
def test_checkpoint_resume_is_bitwise(estimator):
    """Stop after 7 steps (between refreshes), torch.save model and optimizer, load into a
    fresh model and optimizer, run 8 more (with fresh samples and probes): identical to
    never stopping, bit for bit."""
    X, Y = _data(seed=2)
    model = mlp((8, 16, 5), seed=2, dtype=torch.float32)
    X = X.float()
    ours = _stepper(model, estimator)
    gen = torch.Generator().manual_seed(0)
    _train(ours, X, Y, 7, gen)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": ours.optimizer.state_dict(), "gen": gen.get_state()}, buf)
    _train(ours, X, Y, 8, gen)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    resumed = mlp((8, 16, 5), seed=99, dtype=torch.float32)
    resumed.load_state_dict(ckpt["model"])
    again = _stepper(resumed, estimator)
    again.optimizer.load_state_dict(ckpt["opt"])
    gen2 = torch.Generator()
    gen2.set_state(ckpt["gen"])
    _train(again, X, Y, 8, gen2)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert again.optimizer.hessian_updates == ours.optimizer.hessian_updates == 5


def test_nonfinite_gradient_step_is_skipped_entirely():
    """A step with a NaN gradient changes nothing (parameters, state, counters) and is recorded;
    later steps proceed as if it never happened."""
    X, Y = _data()
    a, b = mlp((8, 16, 5), seed=4), mlp((8, 16, 5), seed=4)
    sa, sb = _stepper(a, "gnb"), _stepper(b, "gnb")
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    _train(sa, X, Y, 4, ga)
    _train(sb, X, Y, 4, gb)
    params, state = [p.detach().clone() for p in a.parameters()], copy.deepcopy(sa.optimizer.state_dict()["state"])
    sa.optimizer.zero_grad()
    F.cross_entropy(a(X), Y).backward()
    next(a.parameters()).grad[0, 0] = float("inf")
    sa.optimizer.step()
    ev = sa.optimizer.events[-1]
    assert ev.kind == "nonfinite_grad" and "parameter(s) [0]" in ev.message and sa.optimizer.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), params, strict=True))
    torch.testing.assert_close(sa.optimizer.state_dict()["state"], state, rtol=0, atol=0)
    _train(sa, X, Y, 5, ga)
    _train(sb, X, Y, 5, gb)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert sa.stats()["skipped_steps"] == 1.0 and sa.stats()["events"] == 1.0


def test_nonfinite_estimate_is_not_averaged_in():
    theta = torch.nn.Parameter(torch.ones(2))
    opt = Sophia([theta])
    opt.update_hessian([torch.tensor([1.0, float("nan")])])
    assert "hessian" not in opt.state[theta] and opt.hessian_updates == 0
    assert opt.events[-1].kind == "nonfinite_hessian" and not opt.hessian_due()


def test_no_graph_survives_a_hutchinson_step():
    X, Y = _data()
    model = mlp((8, 16, 5), seed=0)
    s = _stepper(model, "hutchinson")
    s.step(X, Y)
    assert s.optimizer.hessian_updates == 1
    for p in model.parameters():
        assert p.grad is not None and p.grad.grad_fn is None and not p.grad.requires_grad
        assert s.optimizer.state[p]["hessian"].grad_fn is None


def test_sophia_g_refuses_an_objective_without_likelihood():
    quad = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="likelihood"):
        SophiaStepper(quad, None, None, estimator="gnb")
    with pytest.raises(ValueError, match="estimator"):
        SophiaStepper(quad, F.mse_loss, "gaussian", estimator="exact")


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(rho=0.0), dict(betas=(1.0, 0.9)), dict(update_period=0),
                                 dict(eps=0.0), dict(weight_decay=-0.1), dict(update_period=2.5)])
def test_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        Sophia([torch.nn.Parameter(torch.zeros(2))], **bad)


def _devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


@pytest.mark.parametrize("device", _devices())
def test_runs_on_every_available_device(device):
    """Given the same curvature estimates the device takes the CPU's steps (loose tolerance:
    other kernels); with sampled labels and probes (from the CPU generator, so the same draws)
    it trains along the CPU's path, and its state stays on the device."""
    X, Y = _data()
    X = X.float()
    runs = []
    for dev in ("cpu", device):
        model = mlp((8, 16, 5), seed=0, dtype=torch.float32).to(dev)
        opt = Sophia(model.parameters(), lr=1e-2, rho=0.1, update_period=2)
        for t in range(6):
            if opt.hessian_due():
                opt.update_hessian([torch.full_like(p, 0.5 + t) for p in model.parameters()])
            opt.zero_grad()
            F.cross_entropy(model(X.to(dev)), Y.to(dev)).backward()
            opt.step()
        runs.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for estimator in ("gnb", "hutchinson"):
        losses = {}
        for dev in ("cpu", device):
            model = mlp((8, 16, 5), seed=0, dtype=torch.float32).to(dev)
            s = _stepper(model, estimator)
            losses[dev] = [s.step(X.to(dev), Y.to(dev)) for _ in range(21)]
            assert all(t.device.type == dev for st in s.optimizer.state.values() for t in st.values()
                       if isinstance(t, torch.Tensor))
        assert losses[device][-1] < losses[device][0]
        assert losses[device] == pytest.approx(losses["cpu"], rel=1e-3)


def test_the_stepper_says_what_it_is_missing():
    model = mlp((8, 16, 5), seed=1)
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"loss_fn\(outputs, labels\) and likelihood"):
        SophiaStepper(model)
    with pytest.raises(ValueError, match="likelihood must be"):
        SophiaStepper(model, F.cross_entropy, "bernoulli")
    stepper = SophiaStepper(model, estimator="hutchinson")  # model() would be the objective
    with pytest.raises(ValueError, match="pass loss_fn"):
        stepper.step(x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), mlp((8, 16, 5), seed=1).parameters(),
                                                 strict=True))  # nothing moved
