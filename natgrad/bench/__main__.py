"""Command line of the benchmark suite.

    python -m natgrad.bench                      # every benchmark in BENCHES
    python -m natgrad.bench --quick --device cuda
    python -m natgrad.bench kfac shampoo --report-dir docs/bench
    python -m natgrad.bench shampoo --quick --out shampoo.json
    python -m natgrad.bench --report-only --report-dir docs/bench   # CSV and HTML of the stored results

Each benchmark prints its report. A run of the suite (or of several benchmarks) also writes,
into ``--report-dir``, each result as ``<name>.json`` (what the lessons read from
docs/bench), ``report.csv`` (every scalar, :mod:`natgrad.bench.report`) and a self-contained
``report.html``. ``--quick`` runs small protocols: all together in a few minutes on two
CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from natgrad.bench import kfac, shampoo, simplex, soap_muon, sophia
from natgrad.bench.report import flatten, write_csv, write_html

BENCHES = {
    "kfac": (kfac, "K-FAC vs tuned Adam on the digits autoencoder, MLP classifier and CNN"),
    "shampoo": (shampoo, "Shampoo vs tuned Adam on the digits autoencoder, MLP classifier and CNN, time per step "
                         "side by side (and with pytorch-optimizer's Shampoo), and DistributedShampoo on 1-3 gloo "
                         "ranks (those on CPU)"),
    "sophia": (sophia, "Sophia-G and Sophia-H vs tuned AdamW on the character-level transformer, time per step "
                       "side by side at k = 10"),
    "soap-muon": (soap_muon, "SOAP and Muon vs tuned Adam on the digits tasks, time per step side by side with "
                             "heavyball's SOAP"),
    "simplex": (simplex, "the Fisher-Rao natural gradient vs projected gradient descent fitting a categorical "
                         "distribution (steps to KL <= 1e-10)"),
}
DEFAULT_REPORT_DIR = "bench-results"  # docs/bench holds the stored results the lessons read


def progress_bar(done: int, total: int, label: str, started: float, width: int = 30) -> str:
    filled = round(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label} ({time.perf_counter() - started:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natgrad.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", metavar="BENCH",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    parser.add_argument("--quick", action="store_true", help="small protocols (the whole suite in a few minutes)")
    parser.add_argument("--device", default="cpu", help="torch device of the training runs (cpu, cuda, mps)")
    parser.add_argument("--out", default=None, help="with one benchmark: write its result as JSON here")
    parser.add_argument("--report-dir", default=None,
                        help=f"write <name>.json, report.csv and report.html here (default {DEFAULT_REPORT_DIR}/ "
                             "when more than one benchmark runs)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write report.csv and report.html from the <name>.json in --report-dir")
    args = parser.parse_args(argv)
    which = args.which or list(BENCHES)
    unknown = [w for w in which if w not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    if args.out and len(which) != 1:
        parser.error("--out takes one benchmark; use --report-dir for several")
    report_dir = args.report_dir or (DEFAULT_REPORT_DIR if len(which) > 1 or args.report_only else None)
    if args.report_only:
        stored = {name: BENCHES[name][0].load(Path(report_dir) / f"{name}.json") for name in which}
        results = {name: (r, BENCHES[name][0].report(r)) for name, r in stored.items() if r is not None}
        write_report(results, Path(report_dir), "stored results")
        print(f"wrote {report_dir}/report.csv and {report_dir}/report.html from {', '.join(results) or 'nothing'}"
              + "".join(f"; no {name}.json" for name, r in stored.items() if r is None))
        return 0
    started = time.perf_counter()
    results = {}
    for i, name in enumerate(which):
        print(progress_bar(i, len(which), f"running {name}", started), file=sys.stderr, flush=True)
        bench = BENCHES[name][0]
        result = bench.benchmark(quick=args.quick, device=args.device, log=lambda s: print(s, flush=True))
        text = bench.report(result)
        print(text, flush=True)
        results[name] = (result, text)
        if args.out:
            bench.save(result, args.out)
            print(f"wrote {args.out}")
        if report_dir:
            bench.save(result, Path(report_dir) / f"{name}.json")
    print(progress_bar(len(which), len(which), "done", started), file=sys.stderr, flush=True)
    if report_dir:
        write_report(results, Path(report_dir), f"{'quick' if args.quick else 'full'} protocols, {args.device}")
        print(f"wrote {report_dir}/report.csv, {report_dir}/report.html and one JSON per benchmark")
    return 0


def write_report(results: dict[str, tuple[dict, str]], report_dir: Path, what: str) -> None:
    """``report.csv`` (every scalar of every result) and ``report.html`` in ``report_dir``."""
    write_csv([row for name, (result, _) in results.items() for row in flatten(name, result)],
              report_dir / "report.csv")
    write_html(results, report_dir / "report.html", title=f"natgrad benchmarks ({what})")


if __name__ == "__main__":
    sys.exit(main())
