r"""Layer blocks: block-diagonal truncation, K-FAC blocks in our flattening, errors.

Ordering (see :mod:`natgrad.curvature.params`): a Linear layer's slice of the
flattened parameters is ``vec_row(W)`` then ``b``: ``W[o, i]`` at ``o*in + i``,
``b[o]`` at ``out*in + o``. K-FAC's :math:`A \otimes G` is ordered by
column-stacking :math:`\bar W = [W \mid b]`, i.e. entry :math:`(j, o)` at
``j*out + o`` with ``j = in`` for the bias; :math:`G \otimes A` is ordered
row-major, ``o*(in+1) + j``. :func:`kfac_block` permutes the latter into ours.
"""

from __future__ import annotations

import torch
from torch import nn

from natgrad.curvature.params import layer_slices, num_params


def _flat_order(out_features: int, in_features: int, has_bias: bool) -> torch.Tensor:
    """Indices into row-major ``[W | b]`` (out, in+has_bias) listing our order: W row-major, then b."""
    cols = in_features + int(has_bias)
    idx = torch.arange(out_features * cols).reshape(out_features, cols)
    order = [idx[:, :in_features].reshape(-1)]
    if has_bias:
        order.append(idx[:, in_features])
    return torch.cat(order)


def kfac_block(A: torch.Tensor, G: torch.Tensor, has_bias: bool) -> torch.Tensor:
    r"""The K-FAC block :math:`A \otimes G` as a (P_layer, P_layer) matrix in OUR flattening.

    ``A``: (in+1, in+1) with the bias' homogeneous coordinate last if
    ``has_bias``, else (in, in); ``G``: (out, out). Returns the matrix
    :math:`M` with :math:`M_{(o,i),(o',i')} = G_{oo'} A_{ii'}` where the index of
    :math:`W_{oi}` is ``o*in + i`` and that of :math:`b_o` is ``out*in + o`` (A's
    last row/column). Equivalently, ``kron(G, A)`` (row-major ``[W | b]``)
    with rows and columns permuted.
    """
    out_f, cols = G.shape[0], A.shape[0]
    in_f = cols - int(has_bias)
    perm = _flat_order(out_f, in_f, has_bias).to(A.device)
    K = torch.kron(G, A)  # (out*cols, out*cols), index o*cols + j
    return K[perm][:, perm]


def block_diagonal(F: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``F`` (P, P) with every off-diagonal layer block set to zero (a layer = one
    module's weight and bias together, see :func:`layer_slices`)."""
    out = torch.zeros_like(F)
    for sl in layer_slices(model).values():
        out[sl, sl] = F[sl, sl]
    return out


def kfac_matrix(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    r"""The full (P, P) block-diagonal K-FAC matrix :math:`\mathrm{diag}(A_1\otimes G_1, \dots)`
    in our flattening, from :func:`natgrad.curvature.kfac_factors` output."""
    slices = layer_slices(model)
    missing = [name for name in slices if name not in factors]
    if missing:
        raise ValueError(f"no K-FAC factors for layers {missing} (only nn.Linear is supported)")
    modules = dict(model.named_modules())
    P = num_params(model)
    A0 = next(iter(factors.values()))[0]
    M = torch.zeros(P, P, dtype=A0.dtype, device=A0.device)
    for name, sl in slices.items():
        A, G = factors[name]
        module = modules[name]
        if getattr(module, "weight", None) is None or not module.weight.requires_grad:
            raise ValueError(f"layer {name!r}: frozen weights are not supported")
        bias_trained = getattr(module, "bias", None) is not None and module.bias.requires_grad
        if A.shape[0] == module.in_features + 1 and not bias_trained:
            A = A[:-1, :-1]  # frozen bias: drop the homogeneous coordinate
        block = kfac_block(A, G, has_bias=bias_trained)
        M[sl, sl] = block
    return M


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    r""":math:`\lVert \mathrm{approx} - \mathrm{exact} \rVert_F / \lVert \mathrm{exact} \rVert_F`."""
    return float(torch.linalg.norm(approx - exact) / torch.linalg.norm(exact))
