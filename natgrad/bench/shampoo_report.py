"""The text report of ``python -m natgrad.bench shampoo`` (figures, no verdicts)."""

from __future__ import annotations

from natgrad.bench.protocol import comparison_lines, fmt, target_table

__all__ = ["TASK_NAMES", "report"]

TASK_NAMES = {"digits-autoencoder": "digits autoencoder", "digits-classifier": "digits MLP classifier",
          "digits-cnn": "digits CNN"}


def _family(d: dict, prefix: str = "") -> str:
    """"-1/4 per factor, sum statistics" from a configuration (or a row with prefixed keys),
    with ", kernels as matrices" or ", kernels per axis" where the layout is set."""
    p, stats, layout = (d.get(prefix + k) for k in ("exponent_override", "statistics", "tensors"))
    if p is None:
        return "n/a"
    kernels = {"matrix": ", kernels as matrices", "modes": ", kernels per axis"}.get(layout, "")
    return f"-1/{p:g} per factor, {stats} statistics{kernels}"


def _x(v) -> str:
    return fmt(v, ".2f") + "x" if v is not None else "n/a"


def _settings(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def _task_lines(task: str, tr: dict, configs: dict) -> list[str]:
    p = tr["protocol"]
    batch = "full batch" if p["batch_size"] is None else (
        f"mini-batches of {p['batch_size']}, losses on all the data every {p['eval_every']} steps")
    lines = [f"== {TASK_NAMES.get(task, task)} ({task}), {batch}",
             "Shampoo: epsilon 1e-4 x largest eigenvalue, roots every 10 steps, Adam grafting, tuned over",
             *[f"  {family}: {_family(cfg)}; lr {', '.join(f'{x:g}' for x in p['shampoo_lrs'][family])}"
               for family, cfg in configs.items() if family in p["shampoo_lrs"]],
             f"  settings of this task: {_settings(p['shampoo_settings'])}",
             f"Adam lr grid {', '.join(f'{x:.2g}' for x in p['adam_lrs'])}", ""]
    lines += target_table(tr["targets"], "shampoo", "Shampoo")
    lines += [f"  Shampoo at the target of Adam@{t['adam_horizon']}: {_family(t, 'shampoo_')}, lr {t['shampoo_lr']:g}"
              for t in tr["targets"]]
    if "shampoo_steps_to_targets" in tr:
        lines += ["", f"Every Shampoo run ({p['shampoo_steps']} steps): steps to the targets above, final loss"]
        for g, reach in zip(tr["shampoo_grid"], tr["shampoo_steps_to_targets"], strict=True):
            steps = " ".join(f"{fmt(n, 'd'):>5}" for n in reach)
            lines.append(f"  {_family(g['hparams']):52s} lr {g['hparams']['lr']:<6g} {steps}   "
                         f"{fmt(g['final_loss'], '.3g')} ({g['status']})")
    hard = tr["targets"][-1]
    if hard["step_ratio"] is not None:
        lines += [f"At the hardest target, {hard['step_ratio']:.2f}x fewer steps / {tr['timing']['ours_vs_adam']:.2f}x "
                  f"time per step side by side = {hard['step_ratio'] / tr['timing']['ours_vs_adam']:.2f}x less "
                  f"wall-clock on an evenly loaded machine ({_x(hard['time_ratio'])} measured in the grid runs)"]
    c = tr["compare"]
    lines += ["", *comparison_lines(tr, "shampoo", "Shampoo", f"{_family(c, 'shampoo_')}, lr {c['shampoo_lr']:g}",
                                    " in the grids (medians)")]
    t = tr["timing"]
    their = f", pytorch-optimizer lr {t['their_lr']:g}" if t.get("theirs") != "not timed" else ""
    lines += ["", f"Time per training iteration (forward + backward + step, {batch.split(',')[0]}), side by side: "
              f"median of {t['blocks']} interleaved blocks of {t['block']} iterations, Shampoo as at the hardest "
              f"target (lr {t['lr']:g}), Adam lr {t.get('adam_lr', t['lr']):.3g}{their}, {t['threads']} thread(s)"]
    adam = t["seconds_per_step"]["Adam"]
    for name, s in t["seconds_per_step"].items():
        lines.append(f"  {name:30s} {1e3 * s:7.2f} ms  ({s / adam:.2f}x Adam), last loss "
                     f"{fmt(t['final_loss'][name], '.4g')}")
    if t.get("theirs") == "not timed":
        return lines
    if "pytorch-optimizer Shampoo" not in t["seconds_per_step"]:
        lines.append(f"  {'pytorch-optimizer Shampoo':30s} {t['theirs']}")
    else:
        same = t.get("same_work_vs_theirs")
        lines.append(f"  natgrad / pytorch-optimizer ({t['theirs']}): {_x(same)} on the same work (no grafting, no "
                     f"first moment), {t['ours_vs_theirs']:.2f}x with our Adam grafting and first moment")
    return lines


def report(r: dict) -> str:
    lines = [f"Shampoo vs tuned Adam on {len(r['tasks'])} digits task(s) ({'quick' if r['quick'] else 'full'} protocol, "
             f"{r['device']}, torch {r['machine']['torch']}, {r['machine']['threads']} thread(s))"]
    for task, tr in r["tasks"].items():
        lines += ["", *_task_lines(task, tr, r["protocol"]["shampoo_configs"])]
    if r["sharded"]:
        s0 = r["sharded"][0]
        lines += ["", f"Sharded DistributedShampoo (gloo, data parallel, averaged gradients, max_preconditioner_dim "
                      f"{s0['max_preconditioner_dim']}, {s0['steps']} timed steps, {s0.get('cpus', '?')} CPU cores, "
                      "1 thread per rank)",
                  f"  {'model':20s} {'W':>2} {'total KiB':>9} {'per-rank KiB':>22} {'max/(tot/W)':>11} "
                  f"{'ms/step':>8} {'roots ms':>8} {'comm ms':>8} {'max|diff|':>9}"]
        for s in r["sharded"]:
            per = " ".join(f"{o['preconditioner_bytes'] / 1024:.0f}" for o in s["ranks"])
            lines.append(f"  {s.get('model', ''):20s} {s['world_size']:>2} {s['total_bytes'] / 1024:9.0f} {per:>22} "
                         f"{s['balance']:11.3f} {1e3 * s['seconds_per_step']:8.2f} "
                         f"{1e3 * max(o['root_seconds_per_step'] for o in s['ranks']):8.2f} "
                         f"{1e3 * max(o['comm_seconds_per_step'] for o in s['ranks']):8.2f} {s['max_abs_diff']:9.2g}")
    lines += ["", "Goals:"]
    for g in r.get("goals", []):
        lines.append(f"  {g['goal']}: measured {_x(g['value'])}")
    return "\n".join(lines)
