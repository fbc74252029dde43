"""Command line: ``python -m natgrad.bench {kfac} [--quick] [--out FILE]``."""

from __future__ import annotations

import argparse
import sys

from natgrad.bench import kfac


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natgrad.bench", description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("kfac", help="K-FAC vs tuned Adam on the digits autoencoder")
    p.add_argument("--quick", action="store_true", help="a smaller protocol that runs in under 2 minutes")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.which == "kfac":
        result = kfac.benchmark(quick=args.quick, device=args.device, log=lambda s: print(s, flush=True))
        print(kfac.report(result))
        if args.out:
            kfac.save(result, args.out)
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
