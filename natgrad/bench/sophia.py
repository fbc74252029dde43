"""Sophia-G and Sophia-H against tuned AdamW on the character-level transformer.

1. AdamW (betas (0.9, 0.95), weight decay 0.1, as in GPT-2-style pre-training) on
   6 learning rates (``--quick``: 2), each run for the longest horizon on mini-batches
   of 16 sequences of 32 characters of the lesson text (``lesson-chars``); the loss on
   the whole text is evaluated every ``eval_every`` steps.
2. Targets: the whole-text losses tuned AdamW (best learning rate at each horizon)
   reaches after 200, 600 and 1500 steps (``--quick``: 50, 100, 150).
3. Sophia-G (Gauss-Newton-Bartlett) and Sophia-H (Hutchinson) on the same budget as
   AdamW: 6 (learning rate, rho) points each (``--quick``: 2), estimate refreshed every
   k = 10 steps, betas (0.965, 0.99), weight decay 0.1 (Liu et al. 2023, arXiv 2305.14342).
   The grids start at the best settings of 300-step probes, one per estimator, and reach 4x
   higher learning rates.
4. Steps and seconds to each target for Sophia tuned per target and for AdamW, and the
   final whole-text loss of each method tuned at the longest horizon.
5. Time per training iteration (forward, backward, step; one Hessian estimate per block of
   10 iterations) of AdamW, Sophia-G and Sophia-H at k = 10, measured side by side
   (:func:`natgrad.bench.timing.side_by_side`); goal: Sophia within 1.3x of AdamW.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from natgrad.bench.protocol import (
    best_at,
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
from natgrad.bench.timing import side_by_side, takes_task
from natgrad.experiments import make_stepper, make_task
from natgrad.presets import ADAMW_BASE, SOPHIA_BASE
from natgrad.tasks.chars import BATCH, lesson_text

__all__ = ["benchmark", "load", "protocol", "report", "save", "time_per_step"]

TASK = "lesson-chars"
METHODS = {"Sophia-G": "gnb", "Sophia-H": "hutchinson"}
GOAL_TIME_RATIO = 1.3  # Sophia's time per step at k = 10 relative to AdamW's


def protocol(quick: bool) -> dict:
    if quick:
        p = dict(horizons=[50, 100, 150], eval_every=50, timing_blocks=5, adamw_lrs=[3e-3, 1e-2],
                 sophia_points={"Sophia-G": [(1e-3, 0.3), (2e-3, 0.3)], "Sophia-H": [(2e-3, 3.0), (4e-3, 3.0)]})
    else:  # Sophia's grids start at the best of 300-step probes (G: lr 1e-3 with rho 0.2-0.3; H: lr 3e-3 with
        # rho 3) and reach 4x higher learning rates: AdamW's best rate doubles from 300 to 1500 steps
        p = dict(horizons=[200, 600, 1500], eval_every=50, timing_blocks=20,
                 adamw_lrs=[float(x) for x in np.geomspace(1e-3, 2e-2, 6)],
                 sophia_points={"Sophia-G": [(lr, rho) for lr in (1e-3, 2e-3, 4e-3) for rho in (0.1, 0.3)],
                                "Sophia-H": [(lr, rho) for lr in (2e-3, 4e-3, 8e-3) for rho in (1.0, 3.0)]})
    return dict(p, task=TASK, batch_size=BATCH, update_period=SOPHIA_BASE["update_period"], adamw=ADAMW_BASE,
                sophia=SOPHIA_BASE)


def _sophia_grid(p: dict, label: str, device: str, log: Callable[[str], None]):
    points = [dict(SOPHIA_BASE, estimator=METHODS[label], lr=lr, rho=rho) for lr, rho in p["sophia_points"][label]]
    return grid("sophia", points, max(p["horizons"]), TASK, device, log, p["batch_size"], p["eval_every"])


def benchmark(quick: bool = False, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    p = protocol(quick)
    steps = max(p["horizons"])
    log(f"AdamW grid: {len(p['adamw_lrs'])} learning rates x {steps} steps, batches of {p['batch_size']}")
    adamw = grid("adamw", [dict(ADAMW_BASE, lr=lr) for lr in p["adamw_lrs"]], steps, TASK, device, log,
                 p["batch_size"], p["eval_every"])
    grids, targets, final = {"AdamW": adamw}, {}, {}
    for label in METHODS:
        log(f"{label} grid: {len(p['sophia_points'][label])} (learning rate, rho) points x {steps} steps")
        grids[label] = _sophia_grid(p, label, device, log)
        targets[label] = targets_vs_adam(adamw, grids[label], p["horizons"], name="sophia", hparam="lr",
                                         label=label, log=log, extra=("rho",), baseline="AdamW")
    for label, results in grids.items():
        best = best_at(results, steps)
        final[label] = dict(loss=best.loss_at(steps), hparams=best.hparams,
                            seconds_per_step=median_seconds_per_step(results))
    log(f"time per iteration, side by side: {p['timing_blocks']} blocks of 10 per optimizer")
    timing = time_per_step(blocks=p["timing_blocks"], device=device,
                           adamw_lr=final["AdamW"]["hparams"]["lr"],
                           sophia={label: final[label]["hparams"] for label in METHODS})
    add_side_by_side_seconds(targets, timing["seconds_per_step"])
    text = lesson_text()
    result = dict(quick=quick, device=device, machine=machine(), protocol=p, text_characters=len(text),
                  targets=targets, final=final, timing=timing, grids=grids,
                  curves={label: curve(best_at(results, steps)) for label, results in grids.items()})
    result["goals"] = goals(result)
    return to_jsonable(result)


def time_per_step(blocks: int = 20, block: int = 10, warmup_blocks: int = 2, device: str = "cpu",
                  adamw_lr: float = 3e-3, sophia: dict[str, dict] | None = None, threads: int = 1) -> dict:
    """Median seconds per training iteration of AdamW, Sophia-G and Sophia-H on the character
    model (mini-batches of :data:`~natgrad.tasks.chars.BATCH`), side by side; ``block`` = k = 10
    puts exactly one curvature estimate in every timed block. Returns side_by_side's numbers and
    ``ratio_to_adamw`` per Sophia variant."""
    sophia = sophia or {label: dict(SOPHIA_BASE, estimator=est) for label, est in METHODS.items()}

    def sophia_factory(hp: dict):
        return takes_task(lambda task: make_stepper("sophia", task, dict(hp)))

    factories = {"AdamW": lambda m: torch.optim.AdamW(m.parameters(), lr=adamw_lr,
                                                      betas=(ADAMW_BASE["beta1"], ADAMW_BASE["beta2"]),
                                                      weight_decay=ADAMW_BASE["weight_decay"])}
    factories.update({label: sophia_factory(hp) for label, hp in sophia.items()})
    t = side_by_side(factories, lambda: make_task(TASK, 0, torch.device(device), torch.float32), blocks=blocks,
                     block=block, warmup_blocks=warmup_blocks, batch_size=BATCH, threads=threads)
    med = t["seconds_per_step"]
    return dict(t, ratio_to_adamw={label: med[label] / med["AdamW"] for label in sophia}, adamw_lr=adamw_lr,
                sophia_hparams=sophia)


def add_side_by_side_seconds(targets: dict[str, list[dict]], seconds_per_step: dict[str, float]) -> None:
    """Add to each target row the seconds each method needs at the side-by-side time per step
    (``adam_seconds_sbs``, ``sophia_seconds_sbs``: steps x median seconds per iteration) and their
    ratio ``time_ratio_sbs``: the grids' runs are timed one after another, so on a shared machine
    their wall-clock seconds also measure whatever else ran at the time."""
    adamw = seconds_per_step["AdamW"]
    for label, rows in targets.items():
        for row in rows:
            a = None if row["adam_steps"] is None else row["adam_steps"] * adamw
            o = None if row["sophia_steps"] is None else row["sophia_steps"] * seconds_per_step[label]
            row.update(adam_seconds_sbs=a, sophia_seconds_sbs=o, time_ratio_sbs=(a / o) if a is not None and o else None)


def goals(r: dict) -> list[dict]:
    """Sophia's time per step relative to AdamW's (side by side, k = 10), per variant."""
    return [dict(goal=f"{label} time per step within {GOAL_TIME_RATIO:g}x of AdamW's at k = "
                      f"{r['protocol']['update_period']} (side by side)",
                 value=ratio, met=ratio <= GOAL_TIME_RATIO) for label, ratio in r["timing"]["ratio_to_adamw"].items()]


def _hp(h: dict) -> str:
    return ", ".join(f"{k} {h[k]:g}" for k in ("lr", "rho") if k in h)


def report(r: dict) -> str:
    p = r["protocol"]
    lines = [f"Sophia vs tuned AdamW, character-level transformer on the lesson text ({r['text_characters']} "
             f"characters), batches of {p['batch_size']} x 32 characters, whole-text loss every {p['eval_every']} "
             f"steps ({'quick' if r['quick'] else 'full'} protocol, {r['device']}, torch {r['machine']['torch']}, "
             f"{r['machine']['threads']} thread(s))",
             f"AdamW: betas ({p['adamw']['beta1']}, {p['adamw']['beta2']}), weight decay "
             f"{p['adamw']['weight_decay']}, lr {', '.join(f'{x:.2g}' for x in p['adamw_lrs'])}",
             f"Sophia: k = {p['update_period']}, betas {tuple(p['sophia']['betas'])}, weight decay "
             f"{p['sophia']['weight_decay']}; (lr, rho) grids:",
             *[f"  {label}: {', '.join(f'({a:g}, {b:g})' for a, b in points)}"
               for label, points in p["sophia_points"].items()]]
    for label, rows in r["targets"].items():
        lines += ["", f"{label} (Hutchinson)" if "H" in label[-1] else f"{label} (Gauss-Newton-Bartlett)",
                  *target_table(rows, "sophia", label, baseline="AdamW")]
        lines += [f"  {label} at the target of AdamW@{t['adam_horizon']}: lr {t['sophia_lr']:g}, rho "
                  f"{t['sophia_rho']:g}; AdamW lr {t['adam_lr']:.2g}; at the side-by-side step times AdamW "
                  f"{fmt(t.get('adam_seconds_sbs'), '.2f')} s, {label} {fmt(t.get('sophia_seconds_sbs'), '.2f')} s "
                  f"(ratio {fmt(t.get('time_ratio_sbs'), '.2f')})" for t in rows]
    steps = max(p["horizons"])
    lines += ["", f"whole-text loss after {steps} steps, each tuned there:"]
    for label, f in r["final"].items():
        lines.append(f"  {label:9s} {fmt(f['loss'], '.4f')} ({_hp(f['hparams'])}), {1e3 * f['seconds_per_step']:.1f} "
                     "ms/step in the grid (median)")
    t = r["timing"]
    lines += ["", f"Time per training iteration, side by side: median of {t['blocks']} interleaved blocks of "
                  f"{t['block']} iterations (one curvature estimate per block), {t['threads']} thread(s)"]
    adamw = t["seconds_per_step"]["AdamW"]
    for name, s in t["seconds_per_step"].items():
        lines.append(f"  {name:9s} {1e3 * s:7.2f} ms  ({s / adamw:.2f}x AdamW)")
    lines += ["", "Goals:"] + [f"  {g['goal']}: measured {fmt(g['value'], '.2f')}x" for g in r.get("goals", [])]
    return "\n".join(lines)
