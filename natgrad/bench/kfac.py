"""K-FAC against tuned Adam on three digits tasks: the autoencoder, the MLP classifier and the CNN.

Per task (:func:`protocol`):

1. Adam with 8 learning rates (autoencoder: 1e-4 to 3e-2; classifier and CNN: 3e-4 to 1e-1),
   each run for the longest horizon (autoencoder and classifier: 5000 steps, full batch; CNN:
   2000 steps on mini-batches of 256, the loss measured on all 1797 digits every 25 steps).
2. Targets: the losses tuned Adam reaches after each horizon (500, 2000, 5000; CNN: 250, 1000,
   2000), tuned per horizon (the best learning rate there).
3. K-FAC on a grid of initial damping values: on the autoencoder the preset it was tuned with
   (:data:`natgrad.presets.KFAC_BASE`), on the classifier and the CNN the class defaults
   (:data:`natgrad.presets.KFAC_TASK_PRESETS`), ``KFAC(model, damping=d)``: a quadratic-model
   step with bounded momentum, a KL trust region, rejected steps, Levenberg-Marquardt damping
   every step.
4. Steps and seconds to each target for tuned K-FAC and tuned Adam and their ratios, the loss
   of both after ``compare_at`` steps, which K-FAC grid points diverged, and the time per
   training iteration of Adam and K-FAC measured side by side
   (:func:`natgrad.bench.timing.side_by_side`: blocks of 50 iterations, one of each of K-FAC's
   periodic refreshes per block; K-FAC with the task's grid settings, the CNN's at the class
   defaults), from which a second, load-independent wall-clock ratio at each target follows.

``--quick`` shrinks every grid and horizon (a few minutes in all).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from natgrad.bench.protocol import (
    adam_grid,
    adam_protocol,
    best_at,
    compare_at,
    comparison_lines,
    curve,
    fmt,
    grid,
    load,
    machine,
    median_seconds_per_step,
    save,
    target_table,
    targets_vs_adam,
    to_jsonable,
)
from natgrad.presets import KFAC_TASK_PRESETS

__all__ = ["TASKS", "benchmark", "goals", "load", "protocol", "report", "save", "time_per_step"]

TASKS = {
    "digits-autoencoder": "digits autoencoder, full batch",
    "digits-classifier": "digits MLP classifier (64-32-10, tanh, cross-entropy), full batch",
    "digits-cnn": "digits CNN (two 3x3 convolutions, 2048 -> 10 head, cross-entropy), mini-batches of 256",
}
GOALS = dict(step_ratio=5.0, time_ratio=2.0, cnn_per_step=4.0, autoencoder_step_ratio=28.0,
             autoencoder_time_ratio=9.9)


def protocol(task: str, quick: bool) -> dict:
    """Adam's grid and horizons, K-FAC's grid, batch size and evaluation interval of one task."""
    p = adam_protocol(quick)
    p.update(task=task, batch_size=None, eval_every=None, timing_blocks=3 if quick else 6,
             timing_block=10 if quick else 50, timing_hparams={})
    if task == "digits-autoencoder":
        dampings = [1e-2, 1e-1] if quick else [1e-3, 1e-2, 1e-1]
        base = KFAC_TASK_PRESETS[task]
        p.update(kfac_grid=[dict(base, damping=d) for d in dampings], kfac_steps=600 if quick else 3000,
                 timing_hparams=dict(base, damping=1e-2))
        return p
    wide_lrs = [float(x) for x in np.geomspace(3e-4, 1e-1, 8)]
    if task == "digits-classifier":
        p.update(adam_lrs=[1e-2, 3e-2, 1e-1] if quick else wide_lrs,
                 kfac_grid=[dict(KFAC_TASK_PRESETS[task], damping=d) for d in ([1e-1] if quick else [1e-2, 1e-1, 1.0])],
                 kfac_steps=600 if quick else 3000)
        return p
    if task == "digits-cnn":
        p.update(batch_size=256, eval_every=25, adam_lrs=[3e-3, 1e-2] if quick else wide_lrs,
                 horizons=[50, 100] if quick else [250, 1000, 2000], compare_at=100 if quick else 1000,
                 kfac_grid=[dict(KFAC_TASK_PRESETS[task], damping=d) for d in ([1e-1] if quick else [1e-2, 1e-1, 1.0])],
                 kfac_steps=100 if quick else 1000)
        return p
    raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")


def time_per_step(task: str, adam_lr: float, kfac_hparams: dict, blocks: int, block: int,
                  batch_size: int | None = None, device: str = "cpu") -> dict:
    """Seconds per training iteration of Adam and K-FAC on ``task``, side by side."""
    import torch

    from natgrad.bench.timing import side_by_side, takes_task
    from natgrad.experiments import make_stepper, make_task

    t = side_by_side({"Adam": lambda m: torch.optim.Adam(m.parameters(), lr=adam_lr),
                      "K-FAC": takes_task(lambda tk: make_stepper("kfac", tk, kfac_hparams))},
                     lambda: make_task(task, 0, torch.device(device), torch.float32), blocks=blocks, block=block,
                     warmup_blocks=1, batch_size=batch_size)
    s = t["seconds_per_step"]
    return dict(t, kfac_hparams=kfac_hparams, adam_lr=adam_lr, kfac_vs_adam=s["K-FAC"] / s["Adam"])


def benchmark_task(task: str, quick: bool = False, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    p = protocol(task, quick)
    log(f"== {task}: {TASKS[task]}")
    bs, ev = p["batch_size"], p["eval_every"]
    adam = adam_grid(p, task, device, log, batch_size=bs, eval_every=ev)
    log(f"K-FAC grid: {len(p['kfac_grid'])} initial dampings x {p['kfac_steps']} steps")
    kfac = grid("kfac", p["kfac_grid"], p["kfac_steps"], task, device, log, batch_size=bs, eval_every=ev)
    targets = targets_vs_adam(adam, kfac, p["horizons"], name="kfac", hparam="damping", label="K-FAC", log=log)
    adam_sps, kfac_sps = median_seconds_per_step(adam), median_seconds_per_step(kfac)
    hard_lr = best_at(adam, max(p["horizons"])).hparams["lr"]
    log(f"time per iteration, side by side: {p['timing_blocks']} blocks of {p['timing_block']} per optimizer")
    timing = time_per_step(task, hard_lr, p["timing_hparams"], p["timing_blocks"], p["timing_block"], bs, device)
    s = timing["seconds_per_step"]
    log(f"  Adam {1e3 * s['Adam']:.2f} ms, K-FAC {1e3 * s['K-FAC']:.2f} ms ({timing['kfac_vs_adam']:.2f}x)")
    for t in targets:  # the wall-clock ratio with both per-step times from the side-by-side measurement
        ok = t["adam_steps"] and t["kfac_steps"]
        t["time_ratio_side_by_side"] = t["adam_steps"] * s["Adam"] / (t["kfac_steps"] * s["K-FAC"]) if ok else None
    return to_jsonable(dict(
        task=task, title=TASKS[task], quick=quick, device=device, machine=machine(), protocol=p, targets=targets,
        compare=compare_at(adam, kfac, p["compare_at"], name="kfac", hparam="damping"),
        adam_seconds_per_step=adam_sps, kfac_seconds_per_step=kfac_sps, time_per_step_ratio=kfac_sps / adam_sps,
        timing=timing, kfac_failed=[r.hparams.get("damping") for r in kfac if r.status != "ok"
                                    or not math.isfinite(r.final_loss)],
        adam_grid=adam, kfac_grid=kfac,
        curves={"Adam": curve(best_at(adam, max(p["horizons"]))), "K-FAC": curve(best_at(kfac, p["compare_at"]))},
    ))


def benchmark(quick: bool = False, device: str = "cpu", log: Callable[[str], None] = print,
              tasks: tuple[str, ...] = tuple(TASKS)) -> dict:
    t0 = time.perf_counter()
    results = {task: benchmark_task(task, quick, device, log) for task in tasks}
    r = dict(quick=quick, device=device, machine=machine(), tasks=results)
    r["goals"] = goals(r)
    r["wall_seconds"] = time.perf_counter() - t0
    return r


def goals(r: dict) -> list[dict]:
    """The benchmark's goals, each with what was measured and whether it was met."""
    out = []
    for task, tr in r["tasks"].items():
        hard = tr["targets"][-1]
        label = tr["title"].split(",")[0]
        out += [
            dict(task=task, goal=f"{label}: >= {GOALS['step_ratio']:g}x fewer steps than tuned Adam at the hardest "
                                 "target", value=hard["step_ratio"],
                 met=hard["step_ratio"] is not None and hard["step_ratio"] >= GOALS["step_ratio"]),
            dict(task=task, goal=f"{label}: >= {GOALS['time_ratio']:g}x less wall-clock than tuned Adam at the "
                                 "hardest target", value=hard["time_ratio"],
                 met=hard["time_ratio"] is not None and hard["time_ratio"] >= GOALS["time_ratio"]),
            dict(task=task, goal=f"{label}: no K-FAC grid setting diverges within {tr['protocol']['kfac_steps']} "
                                 "steps", value=float(len(tr["kfac_failed"])), met=not tr["kfac_failed"]),
            dict(task=task, goal=f"{label}: K-FAC's loss after {tr['compare']['steps']} steps no worse than Adam's "
                                 "(Adam / K-FAC >= 1)", value=tr["compare"]["loss_ratio"],
                 met=tr["compare"]["loss_ratio"] is not None and tr["compare"]["loss_ratio"] >= 1),
        ]
        if task == "digits-cnn":
            v = tr["timing"]["kfac_vs_adam"]
            out.append(dict(task=task, goal=f"{label}: K-FAC at its defaults within {GOALS['cnn_per_step']:g}x of "
                                            "Adam's time per step (side by side)", value=v,
                            met=v <= GOALS["cnn_per_step"]))
        if task == "digits-autoencoder":
            for key, what in (("step_ratio", "fewer steps"), ("time_ratio", "less wall-clock")):
                need = GOALS[f"autoencoder_{key}"]
                out.append(dict(task=task, goal=f"{label}: >= {need:g}x {what} at the hardest target (kept)",
                                value=hard[key], met=hard[key] is not None and hard[key] >= need))
    return out


def _x(v) -> str:
    return fmt(v, ".2f") + "x" if v is not None else "n/a"


def task_report(r: dict) -> list[str]:
    """The lines of one task (also the whole report of a single-task result)."""
    title = r.get("title", TASKS["digits-autoencoder"])
    lines = [f"K-FAC vs tuned Adam, {title} ({'quick' if r['quick'] else 'full'} protocol, "
             f"{r['device']}, torch {r['machine']['torch']}, {r['machine']['threads']} thread(s))", "",
             *target_table(r["targets"], "kfac", "K-FAC")]
    lines += ["", *comparison_lines(r, "kfac", "K-FAC", f"damping0 {r['compare']['kfac_damping']:g}",
                                    " in the grids (medians)" if "timing" in r else "")]
    if "timing" in r:
        t = r["timing"]
        s = t["seconds_per_step"]
        lines.append(f"time per step side by side ({t['blocks']} interleaved blocks of {t['block']}): Adam "
                     f"{1e3 * s['Adam']:.2f} ms, K-FAC {1e3 * s['K-FAC']:.2f} ms ({t['kfac_vs_adam']:.2f}x); "
                     "wall-clock ratio at the targets from these: "
                     + ", ".join(_x(x.get("time_ratio_side_by_side")) for x in r["targets"]))
        failed = r.get("kfac_failed", [])
        dampings = ", ".join(format(g["damping"], "g") for g in r["protocol"]["kfac_grid"])
        lines.append(f"K-FAC grid (damping0 {dampings}): "
                     + (f"diverged or failed at damping0 {failed}" if failed else "every run finished"))
    return lines


def report(r: dict) -> str:
    if "tasks" not in r:
        return "\n".join(task_report(r))
    lines = []
    for tr in r["tasks"].values():
        lines += [*task_report(tr), ""]
    lines.append("Goals:")
    lines += [f"  {g['goal']}: measured {_x(g['value']) if 'diverges' not in g['goal'] else fmt(g['value'], '.0f')}"
              for g in r["goals"]]
    if r.get("wall_seconds") is not None:
        lines.append(f"Benchmark wall time: {r['wall_seconds'] / 60:.1f} min")
    return "\n".join(lines)
