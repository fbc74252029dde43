"""Rerunnable benchmarks: ``python -m natgrad.bench {kfac,shampoo,sophia} [--quick] [--out FILE]``."""
