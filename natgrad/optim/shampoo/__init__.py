"""Shampoo (Gupta, Koren & Singer 2018) and Distributed Shampoo (Anil et al. 2020;
Shi et al. 2023): one place for the whole algorithm.

* :mod:`~natgrad.optim.shampoo.optimizer` - :class:`Shampoo`, the optimizer;
* :mod:`~natgrad.optim.shampoo.blocks` - how parameters are cut into blocks, their
  statistics, roots, and which rank owns each;
* :mod:`~natgrad.optim.shampoo.grafting` - the graft's step size (SGD, AdaGrad, RMSprop, Adam);
* :mod:`~natgrad.optim.shampoo.distributed` - :class:`DistributedShampoo`, blocks sharded
  over ``torch.distributed`` ranks.
"""

from natgrad.optim.shampoo.distributed import DistributedShampoo
from natgrad.optim.shampoo.optimizer import Shampoo

__all__ = ["DistributedShampoo", "Shampoo"]
