"""The benchmark suite's report: one CSV of every scalar result and one self-contained HTML
page with each benchmark's printed report and its figures.

CSV (long format, one row per scalar): ``benchmark, path, value`` where ``path`` names the
place in the benchmark's JSON result (``targets.2.step_ratio``, ``timing.seconds_per_step.Adam``)
and ``value`` is the JSON text of the number, string, bool or null, so :func:`read_csv`
gives back exactly what :func:`write_csv` wrote. Lists of numbers longer than
:data:`MAX_LIST` (loss curves) stay in the JSON results and the HTML figures, not the CSV.

    rows = flatten("shampoo", result)
    write_csv(rows, "report.csv"); read_csv("report.csv") == rows
    write_html({"shampoo": (result, shampoo.report(result))}, "report.html")
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

from natgrad.viz.race import race_figure, step_time_figure

MAX_LIST = 16
COLUMNS = ("benchmark", "path", "value")


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def flatten(benchmark: str, result, path: str = "") -> list[dict]:
    """``{"benchmark", "path", "value"}`` rows for every scalar in a JSON-like result (module docstring)."""
    if isinstance(result, Mapping):
        return [row for k, v in result.items() for row in flatten(benchmark, v, f"{path}.{k}" if path else str(k))]
    if isinstance(result, list | tuple):
        if len(result) > MAX_LIST and all(_is_number(x) or x is None for x in result):
            return []
        return [row for i, v in enumerate(result) for row in flatten(benchmark, v, f"{path}.{i}" if path else str(i))]
    if isinstance(result, float) and not math.isfinite(result):
        result = None
    return [{"benchmark": benchmark, "path": path, "value": result}]


def write_csv(rows: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({"benchmark": r["benchmark"], "path": r["path"], "value": json.dumps(r["value"])})


def read_csv(path: str | Path) -> list[dict]:
    """The rows :func:`write_csv` wrote, values parsed back from JSON."""
    with open(path, newline="") as f:
        return [{"benchmark": r["benchmark"], "path": r["path"], "value": json.loads(r["value"])}
                for r in csv.DictReader(f)]


def value(rows: list[dict], benchmark: str, path: str):
    """The value at ``path`` of ``benchmark`` in ``rows`` (KeyError if absent)."""
    for r in rows:
        if r["benchmark"] == benchmark and r["path"] == path:
            return r["value"]
    raise KeyError(f"{benchmark}: {path}")


def _curves(result: Mapping) -> dict[str, dict]:
    """Every ``curves`` mapping in a result (the top level's and, e.g., one per task), by title."""
    out = {}
    if isinstance(result.get("curves"), Mapping):
        out["tuned runs"] = result["curves"]
    for k, v in result.items():
        if isinstance(v, Mapping):
            for title, c in _curves(v).items():
                out[f"{k}: {title}"] = c
    return out


def figures(result: Mapping) -> list:
    """Plotly figures of a result: its loss curves (against steps and seconds) and, when it
    has side-by-side timings, the time per step."""
    figs = []
    for title, curves in _curves(result).items():
        trajs = {name: SimpleNamespace(step=c["step"], loss=c["loss"], seconds=c["seconds"], status="ok")
                 for name, c in curves.items() if {"step", "loss", "seconds"} <= set(c)}
        if trajs:
            figs.append(race_figure(trajs, title))
    timing = result.get("timing")
    if isinstance(timing, Mapping) and isinstance(timing.get("seconds_per_step"), Mapping):
        figs.append(step_time_figure({k: 1e3 * v for k, v in timing["seconds_per_step"].items() if _is_number(v)}))
    return figs


def write_html(results: Mapping[str, tuple[dict, str]], path: str | Path, title: str = "natgrad benchmarks") -> None:
    """One page: per benchmark its printed report and :func:`figures`; plotly.js is inlined
    once, so the file opens without a network."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto} pre{background:#f6f6f6;padding:8px;"
             "overflow-x:auto}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    first = True
    for name, (result, text) in results.items():
        parts += [f"<h2>{html.escape(name)}</h2>", f"<pre>{html.escape(text)}</pre>"]
        for fig in figures(result):
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False))
            first = False
    parts.append("</body></html>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts))
