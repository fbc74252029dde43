"""A Euclidean optimizer handed a geoopt.ManifoldParameter is refused, or warned about, with the reason;
manifold-aware optimizers and ordinary tasks are left alone."""

from __future__ import annotations

import warnings

import geoopt
import pytest
import torch

import natgrad.optim as natgrad_optim
from natgrad.experiments import OPTIMIZERS, Spec, make_stepper, make_task, run
from natgrad.optim.riemannian import ManifoldParameterWarning, check_euclidean, manifold_parameters

CPU = torch.device("cpu")


def _task(name="poincare-tree", **options):
    return make_task(name, 0, CPU, torch.float32, options)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "shampoo", "kfac"])
def test_euclidean_optimizers_refuse_manifold_parameters_and_say_why(optimizer):
    with pytest.raises(ValueError) as info:
        make_stepper(optimizer, _task(), {})
    message = str(info.value)
    assert f"{optimizer} is a Euclidean optimizer" in message and "PoincareBall" in message
    assert "riemannian-adam" in message and "on_manifold='warn'" in message


def test_run_reports_the_refusal_in_words():
    traj = run(Spec.make({"lr": 0.01}, {"k": 2}, task="stiefel-pca", optimizer="adam", steps=5))
    assert traj.status == "error" and "Stiefel" in traj.message and "Euclidean optimizer" in traj.message
    assert not traj.loss


def test_warn_mode_runs_and_warns():
    with pytest.warns(ManifoldParameterWarning, match="Running anyway"):
        make_stepper("adam", _task(), {"on_manifold": "warn"})
    with pytest.raises(ValueError, match="on_manifold must be"):
        make_stepper("adam", _task(), {"on_manifold": "ignore"})


@pytest.mark.parametrize("optimizer", [name for name, b in OPTIMIZERS.items() if getattr(b, "manifold_aware", False)])
def test_manifold_aware_optimizers_are_silent(optimizer):
    assert optimizer in {"riemannian-sgd", "riemannian-adam", "projected-sgd", "projected-adam"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_stepper(optimizer, _task("simplex-kl"), {})


def test_plain_parameters_pass():
    check_euclidean(torch.nn.Linear(2, 2).parameters(), "adam")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_stepper("adam", _task("digits-classifier"), {})
    p = geoopt.ManifoldParameter(torch.ones(3) / 3, manifold=geoopt.Sphere())
    assert manifold_parameters([torch.nn.Parameter(torch.ones(2)), p]) == [p]


def _sphere_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[1].weight = geoopt.ManifoldParameter(torch.linalg.qr(torch.randn(4, 4))[0], manifold=geoopt.Stiefel())
    return model


CONSTRUCTORS = {
    "Shampoo": lambda m: natgrad_optim.Shampoo(m.parameters()),
    "DistributedShampoo": lambda m: natgrad_optim.DistributedShampoo(m.parameters()),
    "SOAP": lambda m: natgrad_optim.SOAP(m.parameters()),
    "Sophia": lambda m: natgrad_optim.Sophia(m.parameters()),
    "K-FAC": lambda m: natgrad_optim.KFAC(m, likelihood="softmax"),
    "MuonAdam": lambda m: natgrad_optim.MuonAdam(m.named_parameters()),
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_natgrads_euclidean_optimizers_warn_when_built_on_a_manifold_parameter(name):
    """Built directly (not through make_stepper), natgrad's own Euclidean optimizers still run, but say that
    their steps leave the manifold; on ordinary parameters, and through make_stepper's warn mode (which has
    already said it), they are silent."""
    with pytest.warns(ManifoldParameterWarning, match=rf"{name} is a Euclidean optimizer.*Stiefel\(canonical\) \(4, 4\)"):
        CONSTRUCTORS[name](_sphere_model())
    plain = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    euclidean = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    euclidean[1].weight = geoopt.ManifoldParameter(euclidean[1].weight.detach().clone())  # geoopt's Euclidean
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CONSTRUCTORS[name](plain)
        CONSTRUCTORS[name](euclidean)


def test_make_stepper_in_warn_mode_warns_once():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        make_stepper("shampoo", _task(), {"on_manifold": "warn"})
    assert [type(w.message) for w in seen] == [ManifoldParameterWarning]
