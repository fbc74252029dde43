"""Curvature tools for small models: exact Fisher / empirical Fisher / GGN,
K-FAC factors, block structure and diagonal estimators.

Flattening convention (everywhere): trainable parameters in
``model.parameters()`` order, each ``p.reshape(-1)`` (row-major), concatenated;
for ``nn.Linear`` the weight ``W[o, i]`` is at ``o*in + i`` and the bias
follows. All curvature matrices are means over the N examples of per-example
quantities (no 1/N inside the per-example loss).

Modules: ``params`` (bookkeeping), ``likelihoods`` (softmax / gaussian),
``fisher`` (dense and diagonal), ``kfac_factors``, ``blocks``.
"""

from natgrad.curvature.blocks import block_diagonal, kfac_block, kfac_matrix, relative_error
from natgrad.curvature.fisher import diag_fisher, exact_fisher, per_example_grads, per_example_jacobians
from natgrad.curvature.kfac_factors import kfac_factors, linear_layers
from natgrad.curvature.params import flatten_params, layer_slices, num_params, param_list

__all__ = [
    "block_diagonal",
    "diag_fisher",
    "exact_fisher",
    "flatten_params",
    "kfac_block",
    "kfac_factors",
    "kfac_matrix",
    "layer_slices",
    "linear_layers",
    "num_params",
    "param_list",
    "per_example_grads",
    "per_example_jacobians",
    "relative_error",
]
