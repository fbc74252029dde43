"""K-FAC behaves like a torch.optim optimizer where a user would expect it to.

Oracles: the same model without the unused layer, a deep copy of the model that makes
exactly one forward pass (BatchNorm buffers), torch.optim.Adam driven by the same
LambdaLR (fallback groups), and the error messages' own words.
"""

import copy
import math

import pytest
import torch
from torch import nn

from natgrad.optim import KFAC

DT = torch.float64


def _data(n=12, d_in=4, classes=3, seed=1, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, dtype=dtype, generator=g), torch.randint(0, classes, (n,), generator=g)


def _flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


class _WithUnused(nn.Module):
    def __init__(self, unused: bool):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 6)
        if unused:
            self.unused = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _copy_used(src: _WithUnused, dst: _WithUnused) -> None:
    dst.a.load_state_dict(src.a.state_dict())
    dst.b.load_state_dict(src.b.state_dict())


@pytest.mark.parametrize("rule", ["fixed", "quadratic"])
def test_an_unused_layer_is_skipped_and_the_factor_interval_holds(rule):
    """The unused layer keeps its weights and gets no gradient; the rest trains exactly as the
    model without that layer; factors change only every factor_update_steps."""
    with_unused, without = _WithUnused(True).to(DT), _WithUnused(False).to(DT)
    _copy_used(with_unused, without)
    unused_before = _flat(with_unused.unused.parameters())
    X, y = _data()
    hp = dict(likelihood="softmax", step_size_rule=rule, lr=0.3, factor_update_steps=3, inverse_update_steps=1,
              curvature_examples=None)
    opt, ref = KFAC(with_unused, **hp), KFAC(without, **hp)
    snapshots = []
    for _ in range(7):
        assert opt.step(X, y) == ref.step(X, y)
        snapshots.append({n: A.clone() for n, (A, _) in opt.factors().items()})
    assert set(snapshots[0]) == {"a", "b"}
    assert torch.equal(_flat(with_unused.unused.parameters()), unused_before)
    assert all(p.grad is None for p in with_unused.unused.parameters())
    torch.testing.assert_close(_flat([with_unused.a.weight, with_unused.b.weight]),
                               _flat([without.a.weight, without.b.weight]), rtol=0, atol=0)
    changed = [not torch.equal(snapshots[k]["b"], snapshots[k - 1]["b"]) for k in range(1, 7)]  # b: its input moves
    assert changed == [False, False, True, False, False, True]  # updates at steps 0, 3 and 6


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


@pytest.mark.parametrize("mode", ["step(x, y)", "loop with closure"])
def test_extra_forward_passes_leave_batchnorm_buffers_as_one_forward_does(mode):
    """rho's extra forward pass (and the forward-mode products of the loop mode) must not
    touch running statistics: after each step they equal those of one plain forward pass."""
    model = _bn_model()
    X, y = _data(16)
    opt = KFAC(model, likelihood="softmax", adaptive_damping=True, damping_adaptation_interval=1,
               step_size_rule="quadratic", fallback_kwargs={"lr": 1e-2})
    for _ in range(4):
        twin = copy.deepcopy(model)
        twin(X)  # exactly one forward pass in training mode
        if mode == "step(x, y)":
            opt.step(X, y)
        else:
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step(lambda: nn.functional.cross_entropy(model(X), y))
        for (name, b), (_, expected) in zip(model.named_buffers(), twin.named_buffers(), strict=True):
            assert torch.equal(b, expected), name
    assert int(model[1].num_batches_tracked) == 4 and opt.last_rho is not None


def test_schedulers_and_param_groups_reach_the_fallback_optimizer():
    """param_groups[1] is the fallback's: LambdaLR scales its learning rate and a weight decay
    written there reaches it, exactly as for a torch.optim.Adam on the same parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3))
    X, y = _data(8, dtype=torch.float32)
    ln = model[1]
    twin = copy.deepcopy(ln)
    adam = torch.optim.Adam(twin.parameters(), lr=0.05)
    opt = KFAC(model, likelihood="softmax", step_size_rule="fixed", lr=0.1, adaptive_damping=False,
               fallback_kwargs={"lr": 0.05})
    assert len(opt.param_groups) == 2 and [id(p) for p in opt.param_groups[1]["params"]] == [id(ln.weight), id(ln.bias)]
    schedule = lambda k: 0.5**k  # noqa: E731
    sched, twin_sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule), torch.optim.lr_scheduler.LambdaLR(adam, schedule)
    for k in range(4):
        if k == 2:
            opt.param_groups[1]["weight_decay"] = adam.param_groups[0]["weight_decay"] = 0.1
        opt.step(X, y)
        for p, q in zip(twin.parameters(), ln.parameters(), strict=True):
            p.grad = q.grad.clone()
        adam.step()
        sched.step()
        twin_sched.step()
        for p, q in zip(twin.parameters(), ln.parameters(), strict=True):
            assert torch.equal(p, q), k
    assert opt.param_groups[1]["lr"] == pytest.approx(0.05 * 0.5**4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)


def test_a_model_on_the_meta_device_is_refused_with_a_message():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="meta device"):
        KFAC(model, likelihood="softmax")


def test_mismatched_dtypes_are_refused_with_a_message():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[2].double()
    with pytest.raises(ValueError, match=r"one dtype.*torch.float32: 0; torch.float64: 2"):
        KFAC(model, likelihood="softmax")
    opt = KFAC(nn.Sequential(nn.Linear(3, 2)), likelihood="softmax")
    with pytest.raises(ValueError, match="inputs are torch.float64 but the model's weights are torch.float32"):
        opt.step(torch.zeros(5, 3, dtype=torch.float64), torch.zeros(5, dtype=torch.int64))


def test_a_skipped_nonfinite_step_does_not_advance_the_step_counter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    X, y = _data()
    opt = KFAC(model, likelihood="softmax")
    theta = _flat(model.parameters())
    bad = X.clone()
    bad[0, 0] = math.nan
    assert math.isnan(opt.step(bad, y))
    assert opt.steps == 0 and opt.event_counts == {"nonfinite_loss": 1} and opt.factors() == {}
    assert torch.equal(_flat(model.parameters()), theta)
    opt.step(X, y)
    assert opt.steps == 1


def test_factor_decay_is_per_step_whatever_the_refresh_interval():
    """Refreshed every 3 steps, the running factor is beta^3 old + (1 - beta^3) new: the same
    memory in steps as refreshing every step (oracle: natgrad.curvature.kfac_factors)."""
    from natgrad.curvature import kfac_factors
    from tests.natgrad.models import mlp

    model = mlp((3, 4, 2), seed=0)
    (X1, _), (X2, _) = _data(5, 3, 2, seed=1), _data(5, 3, 2, seed=2)
    Y1, Y2 = torch.randn(5, 2, dtype=DT), torch.randn(5, 2, dtype=DT)
    opt = KFAC(model, likelihood="gaussian", fisher_type="exact", factor_decay=0.8, factor_update_steps=3,
               step_size_rule="fixed", lr=0.0, adaptive_damping=False)  # lr 0: the model stays put
    for X, Y in ((X1, Y1), (X2, Y2), (X2, Y2), (X2, Y2)):
        opt.step(X, Y)
    f1 = kfac_factors(model, X1, Y1, likelihood="gaussian", kind="type-2")
    f2 = kfac_factors(model, X2, Y2, likelihood="gaussian", kind="type-2")
    for name in f1:
        for i in range(2):
            torch.testing.assert_close(opt.factors()[name][i], 0.8**3 * f1[name][i] + (1 - 0.8**3) * f2[name][i])


@pytest.mark.parametrize("fisher_type", ["true", "empirical"])
@pytest.mark.parametrize("loop", [False, True], ids=["step(x, y)", "loss.backward(); step()"])
def test_a_finished_optimizer_and_its_model_are_freed(fisher_type, loop):
    """Once the caller drops the model and the optimizer, both are freed: K-FAC's tensor hooks
    (kept in the autograd graph, where the garbage collector cannot look) hold no strong
    reference back to them. Oracle: weak references, dead after one gc.collect()."""
    import gc
    import weakref

    import torch.nn.functional as F

    def train():
        model = _WithUnused(False).to(DT)
        opt = KFAC(model, likelihood="softmax", fisher_type=fisher_type, lr=0.1, step_size_rule="fixed",
                   factor_update_steps=1, inverse_update_steps=1, curvature_examples=None)
        X, y = _data()
        for _ in range(3):
            if loop:
                opt.zero_grad()
                F.cross_entropy(model(X), y).backward()
                opt.step()
            else:
                opt.step(X, y)
        model(X)  # a last forward pass with its graph, never backpropagated
        return weakref.ref(model), weakref.ref(opt)

    refs = train()
    gc.collect()
    assert [r() for r in refs] == [None, None]
