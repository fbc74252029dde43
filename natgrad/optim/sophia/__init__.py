"""Sophia (Liu, Li, Hall, Liang & Ma 2023, arXiv 2305.14342, ICLR 2024): one place for the whole algorithm.

* :mod:`~natgrad.optim.sophia.optimizer` - :class:`Sophia`, the optimizer (update rule,
  clipping, checkpoints, statistics), and :class:`SophiaStepper`, which drives it on a task;
* :mod:`~natgrad.optim.sophia.estimators` - the Gauss-Newton-Bartlett (Sophia-G) and
  Hutchinson (Sophia-H) estimates of the Hessian diagonal.
"""

from natgrad.optim.sophia.estimators import gnb_estimate, hutchinson_estimate, sample_labels
from natgrad.optim.sophia.optimizer import ESTIMATORS, Sophia, SophiaStepper

__all__ = ["ESTIMATORS", "Sophia", "SophiaStepper", "gnb_estimate", "hutchinson_estimate", "sample_labels"]
