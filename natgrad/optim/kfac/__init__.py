"""K-FAC (Martens & Grosse 2015): one place for the whole algorithm.

* :mod:`~natgrad.optim.kfac.optimizer` - :class:`KFAC`, the optimizer (``step(x, y)`` or an ordinary loop);
* :mod:`~natgrad.optim.kfac.capture` - the hooks that see each forward and backward pass;
* :mod:`~natgrad.optim.kfac.update` - the pieces of an update: factors, inverses, proposal, step size;
* :mod:`~natgrad.optim.kfac.layers` - the layers it preconditions and their Kronecker factors;
* :mod:`~natgrad.optim.kfac.linalg` - the damped inverse (eigenbases; Cholesky for wide factors);
* :mod:`~natgrad.optim.kfac.quadratic` - the exact-Fisher quadratic model that picks the step;
* :mod:`~natgrad.optim.kfac.safeguard` - bounded coefficients, the KL trust region, rejected steps;
* :mod:`~natgrad.optim.kfac.damping` - the Levenberg-Marquardt damping rule;
* :mod:`~natgrad.optim.kfac.state` - checkpoints.
"""

from natgrad.optim.kfac.damping import LevenbergMarquardt, levenberg_marquardt, lm_omega
from natgrad.optim.kfac.optimizer import KFAC
from natgrad.optim.kfac.quadratic import ggn_vp

__all__ = ["KFAC", "LevenbergMarquardt", "ggn_vp", "levenberg_marquardt", "lm_omega"]
