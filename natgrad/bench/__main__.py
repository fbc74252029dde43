"""Command line: ``python -m natgrad.bench {kfac,shampoo,simplex} [--quick] [--out FILE] [--device cpu]``."""

from __future__ import annotations

import argparse
import sys

from natgrad.bench import kfac, shampoo, simplex

BENCHES = {
    "kfac": (kfac, "K-FAC vs tuned Adam on the digits autoencoder"),
    "shampoo": (shampoo, "Shampoo vs tuned Adam on the digits autoencoder, time per step side by side with "
                         "pytorch-optimizer's Shampoo, and DistributedShampoo on 1-3 gloo ranks (those on CPU)"),
    "simplex": (simplex, "the Fisher-Rao natural gradient vs projected gradient descent fitting a categorical "
                         "distribution (steps to KL <= 1e-10)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natgrad.bench", description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    for name, (_, what) in BENCHES.items():
        p = sub.add_parser(name, help=what)
        p.add_argument("--quick", action="store_true", help="a smaller protocol that runs in under 2 minutes")
        p.add_argument("--out", default=None, help="write the results as JSON here")
        p.add_argument("--device", default="cpu", help="torch device of the training runs")
    args = parser.parse_args(argv)
    bench = BENCHES[args.which][0]
    result = bench.benchmark(quick=args.quick, device=args.device, log=lambda s: print(s, flush=True))
    print(bench.report(result))
    if args.out:
        bench.save(result, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
