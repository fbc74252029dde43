"""Optimizers.

* ``KFAC`` owns its model (``step(inputs, targets)``); the Levenberg-Marquardt damping
  rule is a small pure function so labs and tests can use it on its own.
* ``Shampoo`` is a ``torch.optim.Optimizer`` (``step()`` after ``backward()``);
  ``DistributedShampoo`` is the same update with its preconditioner blocks sharded
  over ``torch.distributed`` ranks.
* ``safe_eigh`` / ``matrix_inverse_root``: the eigendecompositions both use, with a
  float64 retry and keeping the previous result when that fails too.
"""

from natgrad.optim.damping import LevenbergMarquardt, levenberg_marquardt, lm_omega
from natgrad.optim.distributed_shampoo import DistributedShampoo
from natgrad.optim.kfac import KFAC
from natgrad.optim.kfac_quadratic import ggn_vp
from natgrad.optim.linalg import RootComputationError, matrix_inverse_root, safe_eigh
from natgrad.optim.shampoo import Shampoo

__all__ = [
    "KFAC",
    "DistributedShampoo",
    "LevenbergMarquardt",
    "RootComputationError",
    "Shampoo",
    "ggn_vp",
    "levenberg_marquardt",
    "lm_omega",
    "matrix_inverse_root",
    "safe_eigh",
]
