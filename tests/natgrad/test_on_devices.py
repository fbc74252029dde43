"""Every registered optimizer, task and the labs' computations on every available device
(CUDA and MPS parameters are skipped, with the reason, where absent): the same run as on the
CPU up to other kernels' rounding. scripts/gpu_check.sh runs these (pytest -m device)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from natgrad import preconditioners as pc
from natgrad.experiments import OPTIMIZERS, TASKS, Spec, make_task, run
from natgrad.presets import PRESETS
from natgrad.race import applicable
from natgrad.snapshots import curvature_snapshots
from tests.natgrad.devices import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_runs_on_the_device(optimizer, device):
    spec = Spec.make(PRESETS.get(optimizer, {}), task="digits-classifier", optimizer=optimizer, steps=8, device=device)
    t = run(spec)
    assert t.status == "ok", t.message
    assert all(math.isfinite(v) for v in t.loss) and t.loss[-1] < t.loss[0]
    if device != "cpu":  # the same start; then loosely (K-FAC draws its examples with the device's generator)
        cpu = run(replace(spec, device="cpu"))
        assert t.loss[0] == pytest.approx(cpu.loss[0], rel=1e-4)
        assert t.loss[-1] == pytest.approx(cpu.loss[-1], rel=0.1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_builds_on_the_device(task, device):
    t = make_task(task, 0, torch.device(device), torch.float32)
    assert all(p.device.type == device for p in t.model.parameters())
    x, y = t.batch(None, torch.Generator())
    assert math.isfinite(float(t.loss(x, y).detach()))


@pytest.mark.parametrize("device", DEVICES)
def test_race_and_preconditioner_lab_on_the_device(device):
    assert applicable("digits-classifier", device=device)["adam"] is None
    snaps = curvature_snapshots([2], examples=32, device=device)
    c = snaps[0][2]
    assert c.g.device.type == device
    m = pc.measure(c, 1e-3)
    if device != "cpu":
        ref = pc.measure(curvature_snapshots([2], examples=32)[0][2], 1e-3)
        for name in m:
            assert m[name].cosine == pytest.approx(ref[name].cosine, abs=1e-6)
