"""SOAP and Muon against tuned Adam on the digits tasks, and SOAP's time per step side by
side with heavyball's SOAP.

1. Per task (the digits autoencoder and classifier, full batch; ``--quick``: the
   autoencoder only): Adam on a learning-rate grid, each run for the longest horizon;
   targets are the losses tuned Adam reaches at the horizons (best learning rate there).
2. SOAP (:data:`natgrad.presets.SOAP_BASE`) and Muon (:data:`natgrad.presets.MUON_BASE`:
   ``torch.optim.Muon`` on hidden matrices, AdamW on the rest) on small learning-rate
   grids for the same number of steps; steps and seconds of each, tuned per target, to
   every target, with their ratios to Adam's.
3. Time per training iteration (forward, backward, step; full batch) on the digits
   autoencoder, side by side (:func:`natgrad.bench.timing.side_by_side`: interleaved
   blocks of 10 iterations, one eigenbasis refresh each, median): Adam, natgrad's SOAP
   and heavyball's ``SOAP`` (if installed; ``heavyball.utils.compile_mode = None`` so it
   runs uncompiled like ours) with the same hyper-parameters: betas (0.95, 0.95),
   shampoo_beta 0.95, eps 1e-8, no weight decay, bases refreshed every 10 steps by one
   power iteration and QR, vectors on Adam.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from natgrad.bench.protocol import (
    adam_grid,
    best_at,
    curve,
    fmt,
    grid,
    load,
    machine,
    save,
    target_table,
    targets_vs_adam,
    to_jsonable,
)
from natgrad.bench.timing import side_by_side
from natgrad.presets import MUON_BASE, SOAP_BASE
from natgrad.tasks.digits import autoencoder_task

__all__ = ["benchmark", "load", "protocol", "report", "save", "time_per_step"]

OTHERS = {"soap": ("SOAP", SOAP_BASE), "muon": ("Muon", MUON_BASE)}
GOALS = dict(vs_heavyball=1.0)


def protocol(quick: bool) -> dict:
    if quick:
        return dict(tasks=["digits-autoencoder"], adam_lrs=[3e-3, 1e-2], horizons=[50, 150, 300],
                    lrs={"soap": [1e-2], "muon": [0.02]}, timing_blocks=4)
    return dict(tasks=["digits-autoencoder", "digits-classifier"],
                adam_lrs=[float(x) for x in np.geomspace(3e-4, 3e-2, 5)], horizons=[250, 1000, 2000],
                lrs={"soap": [3e-3, 1e-2, 2e-2], "muon": [0.01, 0.02, 0.05]}, timing_blocks=20)


def benchmark(quick: bool = False, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    p = protocol(quick)
    steps = max(p["horizons"])
    tasks = {}
    for task in p["tasks"]:
        log(f"{task}:")
        adam = adam_grid(p, task, device, log)
        out = dict(targets={}, curves={"Adam": curve(best_at(adam, steps))}, adam_grid=adam)
        for name, (label, base) in OTHERS.items():
            log(f"{label} grid: {len(p['lrs'][name])} learning rates x {steps} steps")
            runs = grid(name, [dict(base, lr=lr) for lr in p["lrs"][name]], steps, task, device, log)
            out["targets"][name] = targets_vs_adam(adam, runs, p["horizons"], name=name, hparam="lr", label=label,
                                                   log=log)
            out["curves"][label] = curve(best_at(runs, steps))
            out[f"{name}_grid"] = runs
        tasks[task] = out
    log(f"time per iteration, side by side: {p['timing_blocks']} blocks of 10 per optimizer")
    timing = time_per_step(blocks=p["timing_blocks"], device=device)
    result = dict(quick=quick, device=device, machine=machine(), protocol=p, tasks=tasks, timing=timing)
    result["goals"] = goals(result)
    return to_jsonable(result)


# ------------------------------------------------------------ side-by-side timing
def _heavyball() -> tuple[Callable | None, str]:
    """heavyball's SOAP, uncompiled, and its version; or (None, why)."""
    try:
        import heavyball
    except ImportError:
        return None, "not installed"
    from importlib.metadata import version

    heavyball.utils.compile_mode = None  # torch.compile would take minutes and time the compiler

    def make(params, lr):
        return heavyball.SOAP(params, lr=lr, betas=(0.95, 0.95), shampoo_beta=0.95, eps=1e-8, weight_decay=0.0,
                              precondition_frequency=10, use_precond_schedule=False)

    return make, f"heavyball {version('heavyball')}"


def time_per_step(blocks: int = 20, block: int = 10, warmup_blocks: int = 2, lr: float = 1e-2, device: str = "cpu",
                  threads: int = 1) -> dict:
    """Median seconds per iteration of Adam, natgrad's SOAP (its preset) and heavyball's SOAP
    with the same hyper-parameters, side by side on the digits autoencoder. Adds ``theirs``
    (version or "not installed") and ``ours_vs_theirs``, ``ours_vs_adam`` (ratios of medians)."""
    from natgrad.optim import SOAP

    factories = {"Adam": lambda m: torch.optim.Adam(m.parameters(), lr=lr),
                 "natgrad SOAP": lambda m: SOAP(m.parameters(), lr=lr, **SOAP_BASE)}
    theirs, version = _heavyball()
    if theirs is not None:
        factories["heavyball SOAP"] = lambda m: theirs(m.parameters(), lr)
    t = side_by_side(factories, lambda: autoencoder_task(device=device), blocks=blocks, block=block,
                     warmup_blocks=warmup_blocks, threads=threads)
    med = t["seconds_per_step"]
    return dict(t, theirs=version, lr=lr, ours_vs_adam=med["natgrad SOAP"] / med["Adam"],
                ours_vs_theirs=med["natgrad SOAP"] / med["heavyball SOAP"] if theirs is not None else None)


# ----------------------------------------------------------------------- report
def goals(r: dict) -> list[dict]:
    t = r["timing"]
    v = t.get("ours_vs_theirs")
    return [dict(goal="natgrad SOAP no slower per step than heavyball's SOAP on the same work (ours / theirs <= 1)",
                 value=v, met=None if v is None else v <= GOALS["vs_heavyball"])]


def report(r: dict) -> str:
    p = r["protocol"]
    lines = [f"SOAP and Muon vs tuned Adam ({'quick' if r['quick'] else 'full'} protocol, {r['device']}, torch "
             f"{r['machine']['torch']}, {r['machine']['threads']} thread(s))",
             f"Adam lr grid {', '.join(f'{x:.2g}' for x in p['adam_lrs'])}; SOAP lr "
             f"{', '.join(f'{x:g}' for x in p['lrs']['soap'])}; Muon lr {', '.join(f'{x:g}' for x in p['lrs']['muon'])}"]
    for task, out in r["tasks"].items():
        lines += ["", f"{task}, full batch:"]
        for name, (label, _) in OTHERS.items():
            lines += ["  " + x for x in target_table(out["targets"][name], name, label)]
    t = r["timing"]
    lines += ["", f"Time per training iteration on the digits autoencoder, side by side: median of {t['blocks']} "
                  f"interleaved blocks of {t['block']}, {t['threads']} thread(s)"]
    adam = t["seconds_per_step"]["Adam"]
    for name, s in t["seconds_per_step"].items():
        lines.append(f"  {name:16s} {1e3 * s:7.2f} ms  ({s / adam:.2f}x Adam)")
    if "heavyball SOAP" not in t["seconds_per_step"]:
        lines.append(f"  {'heavyball SOAP':16s} {t['theirs']}")
    else:
        lines.append(f"  natgrad SOAP / heavyball SOAP ({t['theirs']}): {fmt(t['ours_vs_theirs'], '.2f')}x")
    lines += ["", "Goals:"] + [f"  {g['goal']}: measured {fmt(g['value'], '.2f')}" for g in r.get("goals", [])]
    return "\n".join(lines)
