"""Time per training step of every registered optimizer on every device, side by side.

    python -m natgrad.bench.devices [--devices cpu cuda] [--steps 30] [--out step_times.txt]

For each task and each optimizer that applies to it (:func:`natgrad.race.applicable`), a
run of ``--steps`` steps from its preset (:func:`natgrad.experiments.run`, one CPU thread,
CUDA synchronised around each step) after ``--warmup`` untimed steps on the same device,
per device; the table has one row per (task, optimizer) with the milliseconds per step on
each device and their ratio to the first device's. A device that is absent is left out
with a note.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from natgrad.devices import describe
from natgrad.experiments import Spec, run
from natgrad.presets import PRESETS
from natgrad.race import applicable, label

TASKS = {"digits-autoencoder": None, "digits-classifier": None, "digits-cnn": 256}  # task -> batch size


def available(device: str) -> bool:
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    return True


def step_times(devices: list[str], tasks: dict[str, int | None] | None = None, steps: int = 30, warmup: int = 5,
               log=print) -> list[dict]:
    """Rows ``{task, optimizer, <device>_ms, <device>_status, ...}`` (module docstring)."""
    devices = [d for d in devices if available(d)]
    rows = []
    for task, batch in (tasks or TASKS).items():
        for name, why in applicable(task).items():
            if why is not None:
                continue
            row = dict(task=task, optimizer=label(name), batch_size=batch)
            for dev in devices:
                spec = Spec.make(PRESETS.get(name, {}), task=task, optimizer=name, steps=warmup + steps,
                                 device=dev, batch_size=batch)
                t = run(spec)
                n = len(t.seconds) - warmup
                ms = 1e3 * (t.seconds[-1] - (t.seconds[warmup - 1] if warmup else 0.0)) / n if n > 0 else math.nan
                row[f"{dev}_ms"] = ms if t.status == "ok" else math.nan
                row[f"{dev}_status"] = t.status if t.status == "ok" else f"{t.status}: {t.message}"
                log(f"  {task:20s} {label(name):14s} {dev:5s} {ms:8.2f} ms/step ({t.status})")
            rows.append(row)
    return rows


def table(rows: list[dict], devices: list[str]) -> str:
    devices = [d for d in devices if available(d)]
    head = f"{'task':20s} {'optimizer':14s} " + " ".join(f"{d + ' ms/step':>14s}" for d in devices)
    if len(devices) > 1:
        head += " " + " ".join(f"{d + '/' + devices[0]:>12s}" for d in devices[1:])
    lines = [head]
    for r in rows:
        line = f"{r['task']:20s} {r['optimizer']:14s} " + " ".join(f"{r[d + '_ms']:14.2f}" for d in devices)
        if len(devices) > 1:
            line += " " + " ".join(f"{r[d + '_ms'] / r[devices[0] + '_ms']:12.3f}" for d in devices[1:])
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natgrad.bench.devices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    missing = [d for d in args.devices if not available(d)]
    header = [f"torch {torch.__version__}; " + "; ".join(f"{d}: {describe(d).name}" for d in args.devices
                                                          if available(d))]
    if missing:
        header.append(f"not available here (left out): {', '.join(missing)}")
    print("\n".join(header), flush=True)
    rows = step_times(args.devices, steps=args.steps, warmup=args.warmup)
    text = "\n".join(header + ["", table(rows, args.devices)])
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
