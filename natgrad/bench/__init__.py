"""Rerunnable benchmarks: ``python -m natgrad.bench kfac [--quick]``."""
