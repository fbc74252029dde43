"""Computations behind the labs that are not one training run of ``experiments.run``.

* :mod:`natgrad.labs.paths` - the paths Sophia, Adam and Newton's method take on a
  two-parameter toy (optimizers from the registries, every iterate recorded);
* :mod:`natgrad.labs.adam_fisher` - Adam's second moment next to the empirical and the
  true Fisher diagonal of the digits classifier at a chosen step.
"""
