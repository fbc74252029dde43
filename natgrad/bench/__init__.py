"""Rerunnable benchmarks: ``python -m natgrad.bench {kfac,shampoo} [--quick] [--out FILE]``."""
