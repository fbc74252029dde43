"""Optimizers, one place per algorithm.

* :mod:`natgrad.optim.kfac` - ``KFAC``: a ``torch.optim.Optimizer`` that also owns its
  model (``step(inputs, targets)`` for the labs); the Levenberg-Marquardt damping rule
  is a small pure function so labs and tests can use it on its own.
* :mod:`natgrad.optim.shampoo` - ``Shampoo`` (``step()`` after ``backward()``) and
  ``DistributedShampoo``, the same update with its preconditioner blocks sharded over
  ``torch.distributed`` ranks.
* :mod:`natgrad.optim.soap` - ``SOAP``: Adam in the eigenbasis of Shampoo's factors, on
  Shampoo's blocks.
* :mod:`natgrad.optim.muon` - ``MuonAdam``: ``torch.optim.Muon`` on hidden matrices with
  ``AdamW`` on the rest, as one optimizer.
* :mod:`natgrad.optim.riemannian` - Riemannian optimization on geoopt: the Fisher-Rao
  probability simplex as a ``geoopt.Manifold``, Euclidean-then-project baselines, and the
  guard that refuses Euclidean optimizers on ``geoopt.ManifoldParameter`` s (imported on
  its own, not re-exported here).
* :mod:`natgrad.optim.sophia` - ``Sophia``: momentum over an EMA of a diagonal Hessian
  estimate (Gauss-Newton-Bartlett or Hutchinson), clipped per coordinate; ``SophiaStepper``
  drives it on a task.
* :mod:`natgrad.optim.linalg` - what they share: ``safe_eigh`` / ``robust_eigh`` /
  ``matrix_inverse_root`` (float64 retry, previous result kept) and the ``EventLog``.
"""

from natgrad.optim.kfac import KFAC, LevenbergMarquardt, ggn_vp, levenberg_marquardt, lm_omega
from natgrad.optim.linalg import Event, EventLog, RootComputationError, matrix_inverse_root, robust_eigh, safe_eigh
from natgrad.optim.muon import MuonAdam
from natgrad.optim.shampoo import DistributedShampoo, Shampoo
from natgrad.optim.soap import SOAP
from natgrad.optim.sophia import Sophia, SophiaStepper

__all__ = [
    "KFAC",
    "DistributedShampoo",
    "Event",
    "EventLog",
    "LevenbergMarquardt",
    "MuonAdam",
    "RootComputationError",
    "SOAP",
    "Shampoo",
    "Sophia",
    "SophiaStepper",
    "ggn_vp",
    "levenberg_marquardt",
    "lm_omega",
    "matrix_inverse_root",
    "robust_eigh",
    "safe_eigh",
]
