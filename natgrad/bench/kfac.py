"""K-FAC against tuned Adam on the digits autoencoder.

1. Adam with at least 8 learning rates from 1e-4 to 3e-2, each run for the
   longest horizon (5000 steps; ``--quick``: 2 learning rates, 300 steps).
2. Targets: the losses tuned Adam reaches after 500, 2000 and 5000 steps
   (``--quick``: 50, 150, 300), tuned per horizon (best learning rate there).
3. K-FAC on a small grid of initial damping values, full batch, true Fisher,
   pi-damping, Levenberg-Marquardt damping every 5 steps, step size and
   momentum from the exact-Fisher quadratic model (Martens & Grosse 2015, s.7)
   with its curvature terms on 512 random examples per step (:data:`natgrad.presets.KFAC_BASE`).
4. Steps and seconds to each target for tuned K-FAC and tuned Adam, their
   ratios, time per step, and the loss after 3000 steps (``--quick``: 200).
"""

from __future__ import annotations

from collections.abc import Callable

from natgrad.bench.protocol import (
    adam_grid,
    adam_protocol,
    best_at,
    compare_at,
    comparison_lines,
    curve,
    grid,
    load,
    machine,
    median_seconds_per_step,
    save,
    target_table,
    targets_vs_adam,
    to_jsonable,
)
from natgrad.presets import KFAC_BASE

__all__ = ["benchmark", "load", "protocol", "report", "save"]

TASK = "digits-autoencoder"

def protocol(quick: bool) -> dict:
    if quick:
        return dict(adam_protocol(quick), kfac_dampings=[1e-2], kfac_steps=200)
    return dict(adam_protocol(quick), kfac_dampings=[1e-3, 1e-2, 1e-1], kfac_steps=3000)


def benchmark(quick: bool = False, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    p = protocol(quick)
    adam = adam_grid(p, TASK, device, log)
    log(f"K-FAC grid: {len(p['kfac_dampings'])} initial dampings x {p['kfac_steps']} steps")
    kfac = grid("kfac", [dict(KFAC_BASE, damping=d) for d in p["kfac_dampings"]], p["kfac_steps"], TASK, device, log)
    targets = targets_vs_adam(adam, kfac, p["horizons"], name="kfac", hparam="damping", label="K-FAC", log=log)
    c = p["compare_at"]
    adam_sps, kfac_sps = median_seconds_per_step(adam), median_seconds_per_step(kfac)
    return to_jsonable(dict(
        quick=quick, device=device, machine=machine(), protocol=p, targets=targets,
        compare=compare_at(adam, kfac, c, name="kfac", hparam="damping"),
        adam_seconds_per_step=adam_sps, kfac_seconds_per_step=kfac_sps, time_per_step_ratio=kfac_sps / adam_sps,
        adam_grid=adam, kfac_grid=kfac,
        curves={"Adam": curve(best_at(adam, max(p["horizons"]))), "K-FAC": curve(best_at(kfac, c))},
    ))


def report(r: dict) -> str:
    lines = [f"K-FAC vs tuned Adam, digits autoencoder, full batch ({'quick' if r['quick'] else 'full'} protocol, "
             f"{r['device']}, torch {r['machine']['torch']}, {r['machine']['threads']} thread(s))", "",
             *target_table(r["targets"], "kfac", "K-FAC")]
    lines += ["", *comparison_lines(r, "kfac", "K-FAC", f"damping0 {r['compare']['kfac_damping']:g}")]
    return "\n".join(lines)
