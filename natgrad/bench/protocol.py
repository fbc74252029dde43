"""The shared benchmark protocol: tune each optimizer on a grid, derive targets
from tuned Adam, and measure steps and seconds to reach them."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from natgrad.experiments import Spec, Trajectory, run


@dataclass
class GridResult:
    label: str
    hparams: dict
    final_loss: float
    status: str
    seconds_per_step: float
    trajectory: Trajectory = field(repr=False)

    def loss_at(self, step: int) -> float:
        t = self.trajectory
        if step - 1 < len(t.loss):
            return t.loss[step - 1]
        return math.inf  # diverged or stopped before this step


def grid(optimizer: str, grids: Sequence[dict], steps: int, task: str, device: str,
         log: Callable[[str], None] = print) -> list[GridResult]:
    out = []
    for hp in grids:
        traj = run(Spec.make(hp, task=task, optimizer=optimizer, steps=steps, device=device))
        sps = traj.seconds[-1] / len(traj.seconds) if traj.seconds else math.nan
        res = GridResult(optimizer, hp, traj.final_loss, traj.status, sps, traj)
        log(f"  {optimizer:5s} {hp}: loss {res.final_loss:.4g} after {len(traj.loss)} steps "
            f"({traj.status}), {1e3 * sps:.2f} ms/step")
        out.append(res)
    return out


def best_at(results: Sequence[GridResult], step: int) -> GridResult:
    return min(results, key=lambda r: r.loss_at(step))


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def to_jsonable(obj):
    if isinstance(obj, GridResult):
        return {k: to_jsonable(getattr(obj, k)) for k in ("label", "hparams", "final_loss", "status", "seconds_per_step")}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
