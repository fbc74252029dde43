"""The shared benchmark protocol: tune each optimizer on a grid, derive targets
from tuned Adam, and measure steps and seconds to reach them."""

from __future__ import annotations

import bisect
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
        """The loss after ``step`` steps: the training loss recorded before update ``step - 1``
        or, for runs with whole-data evaluations (``Spec.eval_every``), the last evaluation at or
        before ``step``; inf when the run ended (diverged or stopped) before that. ``step <= 0``: the
        first recorded loss, the one before any update (inf for a run that recorded none)."""
        t = self.trajectory
        if t.eval_step:
            if step > t.eval_step[-1]:
                return math.inf
            return t.eval_loss[bisect.bisect_right(t.eval_step, step) - 1]
        if step <= 0:  # (loss[step - 1] read the *last* loss here)
            return t.loss[0] if t.loss else math.inf
        return t.loss[step - 1] if step - 1 < len(t.loss) else math.inf


def grid(optimizer: str, grids: Sequence[dict], steps: int, task: str, device: str,
         log: Callable[[str], None] = print, batch_size: int | None = None,
         eval_every: int | None = None) -> list[GridResult]:
    """One run per hyper-parameter dict; with ``eval_every`` the curves and final losses are
    the whole-data losses of :meth:`natgrad.experiments.Trajectory.curve`."""
    out = []
    for hp in grids:
        traj = run(Spec.make(hp, task=task, optimizer=optimizer, steps=steps, device=device, batch_size=batch_size,
                             eval_every=eval_every))
        sps = traj.seconds[-1] / len(traj.seconds) if traj.seconds else math.nan
        final = traj.curve()[1][-1] if traj.eval_step else traj.final_loss
        res = GridResult(optimizer, hp, final, traj.status, sps, traj)
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
    if isinstance(obj, np.generic):  # numpy scalars (float32 ...) as Python numbers json can write
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------
# Shared by the benchmarks that compare one optimizer against tuned Adam.

def adam_protocol(quick: bool) -> dict:
    """Adam's learning-rate grid, the horizons whose tuned-Adam losses are the
    targets, and the step at which both final losses are compared."""
    if quick:  # small enough for every benchmark of the suite together to run in minutes
        return dict(adam_lrs=[3e-3, 1e-2], horizons=[50, 150, 300], compare_at=200)
    return dict(adam_lrs=[float(x) for x in np.geomspace(1e-4, 3e-2, 8)], horizons=[500, 2000, 5000], compare_at=3000)


_ADAM_GRIDS: dict[tuple, list[GridResult]] = {}  # one per process and setting: benchmarks of a suite share it


def adam_grid(p: dict, task: str, device: str, log: Callable[[str], None] = print,
              batch_size: int | None = None, eval_every: int | None = None) -> list[GridResult]:
    """Adam on ``p["adam_lrs"]`` (from :func:`adam_protocol`), each for the longest horizon.
    Runs are deterministic, so a grid already run in this process is reused."""
    horizon = max(p["horizons"])
    key = (tuple(p["adam_lrs"]), horizon, task, device, batch_size, eval_every)
    if key in _ADAM_GRIDS:
        log(f"Adam grid: {len(p['adam_lrs'])} learning rates x {horizon} steps (already run in this process)")
        return _ADAM_GRIDS[key]
    log(f"Adam grid: {len(p['adam_lrs'])} learning rates x {horizon} steps")
    out = grid("adam", [{"lr": lr} for lr in p["adam_lrs"]], horizon, task, device, log, batch_size, eval_every)
    _ADAM_GRIDS[key] = out
    return out


def first_reach(traj: Trajectory, target: float) -> tuple[int | None, float | None]:
    """Steps and seconds until the loss first is at or below ``target`` (None: never)."""
    return traj.steps_to(target), traj.seconds_to(target)


def _ratio(a: float | None, o: float | None) -> float | None:
    """a / o; None where either never reaches the target; inf where other reaches it at once (step 0)."""
    if a is None or o is None:
        return None
    return a / o if o else math.inf


def targets_vs_adam(adam: Sequence[GridResult], other: Sequence[GridResult], horizons: Sequence[int], *,
                    name: str, hparam: str, label: str, log: Callable[[str], None] = print,
                    extra: Sequence[str] = (), baseline: str = "Adam") -> list[dict]:
    """One row per horizon ``h``: the target is the loss tuned Adam (best learning
    rate at ``h``) reaches after ``h`` steps; ``other`` is tuned per target (the
    grid point that gets there in the fewest steps; if none does, the one with
    the lowest final loss). Keys: ``adam_horizon, target, adam_lr, adam_steps,
    adam_seconds, {name}_{hparam}, {name}_steps, {name}_seconds, step_ratio,
    time_ratio`` (ratios Adam / other; None where other never reaches it), and
    ``{name}_{key}`` for each hyper-parameter named in ``extra``. ``baseline`` names the
    tuned grid ``adam`` in the log (e.g. "AdamW"); the keys stay ``adam_*``."""
    rows = []
    for h in horizons:
        a = best_at(adam, h)
        target = a.loss_at(h)
        reach = [(r, *first_reach(r.trajectory, target)) for r in other]
        ok = [x for x in reach if x[1] is not None]
        if ok:
            o, o_steps, o_secs = min(ok, key=lambda x: x[1])
        else:
            o, o_steps, o_secs = best_at(other, max(len(r.trajectory.loss) for r in other)), None, None
        a_steps, a_secs = first_reach(a.trajectory, target)
        rows.append({"adam_horizon": h, "target": target, "adam_lr": a.hparams["lr"], "adam_steps": a_steps,
                     "adam_seconds": a_secs, f"{name}_{hparam}": o.hparams[hparam], f"{name}_steps": o_steps,
                     f"{name}_seconds": o_secs, "step_ratio": _ratio(a_steps, o_steps),
                     "time_ratio": _ratio(a_secs, o_secs),
                     **{f"{name}_{k}": o.hparams.get(k) for k in extra}})
        log(f"target {target:.4g} (tuned {baseline} @ {h}): {baseline} {a_steps} steps / {fmt(a_secs, '.2f')}s, "
            f"{label} {o_steps} steps / {fmt(o_secs, '.2f')}s")
    return rows


def compare_at(adam: Sequence[GridResult], other: Sequence[GridResult], steps: int, *, name: str,
               hparam: str, extra: Sequence[str] = ()) -> dict:
    """Losses of tuned Adam and tuned ``other`` (each the best of its grid there) after ``steps`` steps."""
    a, o = best_at(adam, steps), best_at(other, steps)
    return {"steps": steps, "adam_loss": a.loss_at(steps), "adam_lr": a.hparams["lr"],
            f"{name}_loss": o.loss_at(steps), f"{name}_{hparam}": o.hparams[hparam],
            "loss_ratio": a.loss_at(steps) / o.loss_at(steps), **{f"{name}_{k}": o.hparams.get(k) for k in extra}}


def median_seconds_per_step(results: Sequence[GridResult]) -> float:
    return float(np.median([r.seconds_per_step for r in results]))


def fmt(x, spec: str = ".3g") -> str:
    """``format(x, spec)``, or "n/a" for None and non-finite floats."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def target_table(targets: Sequence[dict], name: str, label: str, baseline: str = "Adam") -> list[str]:
    """Report lines: steps and seconds to each target for ``baseline`` (the tuned grid the
    targets come from, Adam by default) and ``label``, with ratios."""
    ws, wt = max(10, len(label) + 6), max(8, len(label) + 2)
    wb, wbt = max(10, len(baseline) + 6), max(8, len(baseline) + 2)
    lines = [f"{'target (' + baseline + '@steps)':>22} {baseline + ' steps':>{wb}} {label + ' steps':>{ws}} {'ratio':>7} "
             f"{baseline + ' s':>{wbt}} {label + ' s':>{wt}} {'ratio':>7}"]
    for t in targets:
        lines.append(f"{fmt(t['target'], '.4g') + ' (@' + str(t['adam_horizon']) + ')':>22} "
                     f"{fmt(t['adam_steps'], 'd'):>{wb}} {fmt(t[name + '_steps'], 'd'):>{ws}} "
                     f"{fmt(t['step_ratio'], '.1f'):>7} {fmt(t['adam_seconds'], '.2f'):>{wbt}} "
                     f"{fmt(t[name + '_seconds'], '.2f'):>{wt}} {fmt(t['time_ratio'], '.1f'):>7}")
    return lines


def comparison_lines(r: dict, name: str, label: str, setting: str, timing_note: str = "") -> list[str]:
    """Report lines: both methods' loss after ``r["compare"]["steps"]`` steps, and their
    time per step (``setting`` describes the compared ``label`` run)."""
    c = r["compare"]
    return [f"loss after {c['steps']} steps: tuned Adam {fmt(c['adam_loss'], '.4g')} (lr {c['adam_lr']:.3g}), "
            f"{label} {fmt(c[name + '_loss'], '.4g')} ({setting}): Adam/{label} = {fmt(c['loss_ratio'], '.2f')}x",
            f"time per step{timing_note}: Adam {1e3 * r['adam_seconds_per_step']:.2f} ms, {label} "
            f"{1e3 * r[name + '_seconds_per_step']:.2f} ms ({r['time_per_step_ratio']:.2f}x)"]


def curve(r: GridResult, points: int = 400) -> dict:
    """At most ``points`` evenly spaced samples of a run's loss curve (:meth:`Trajectory.curve`), for plots."""
    steps, losses, seconds = r.trajectory.curve()
    idx = sorted(set(np.linspace(0, len(losses) - 1, min(points, len(losses))).astype(int).tolist()))
    return {"hparams": r.hparams, "step": [steps[i] for i in idx], "loss": [losses[i] for i in idx],
            "seconds": [seconds[i] for i in idx]}


def save(result: dict, path: str | Path) -> None:
    """``result`` as JSON (through :func:`to_jsonable`: numpy scalars as numbers, inf and NaN as null)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_jsonable(result), indent=1))


def load(path: str | Path) -> dict | None:
    """A saved result, or None if the file is missing, not JSON, or not a result (a JSON object with keys)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data else None
