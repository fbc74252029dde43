r"""The layers K-FAC preconditions, seen as one matrix :math:`\bar W = [W \mid b]` each.

``nn.Linear`` (any leading dims) and ``nn.Conv2d`` (``groups=1``, zero padding).
A layer computes :math:`s_t = \bar W \bar a_t` at positions :math:`t \in T`
(one position for a Linear on (B, in); every output pixel for a convolution,
whose :math:`a_t` is the unfolded input patch, Grosse & Martens 2016), with
:math:`\bar a_t = [a_t; 1]` when the bias is trained. Per-example gradient:
:math:`\nabla_{\bar W} \ell_n = \sum_t g_{n,t} \bar a_{n,t}^\top`, :math:`g = \partial\ell_n/\partial s`.

Batch factors (KFC convention: mean over positions in A, sum over positions in G,
mean over the N examples in both, so that for one example and one position
:math:`A \otimes G` is exactly the Fisher block):

.. math::
    A = \frac{1}{N |T|} \sum_{n,t} \bar a_{n,t} \bar a_{n,t}^\top, \qquad
    G = \frac{1}{N} \sum_{n} \sum_t \mathbb{E}[g_{n,t} g_{n,t}^\top].

References: Martens & Grosse, ICML 2015, arXiv 1503.05671; Grosse & Martens,
ICML 2016, arXiv 1602.01407 (KFC); Eschenhagen et al., NeurIPS 2023,
arXiv 2311.00636 (K-FAC-expand for weight-sharing layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(eq=False)
class KFACLayer:
    """One preconditioned module; ``name`` is its ``named_modules()`` name."""

    name: str
    module: nn.Linear | nn.Conv2d

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def has_bias(self) -> bool:
        b = self.module.bias
        return b is not None and b.requires_grad

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.module.weight, self.module.bias] if self.has_bias else [self.module.weight]

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def in_dim(self) -> int:
        """Size of A: fan-in (in, or in*kh*kw) plus one for a trained bias."""
        return self.weight[0].numel() + int(self.has_bias)

    def patches(self, x: torch.Tensor, homogeneous: bool = True) -> torch.Tensor:
        r"""Layer input -> :math:`\bar a`: (B, T, in_dim) (without the trailing 1 when not ``homogeneous``)."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            if x.ndim != 4:
                raise NotImplementedError(f"K-FAC layer {self.name!r}: Conv2d needs (B, C, H, W) inputs")
            padding = m.padding
            if isinstance(padding, str):  # "valid" or "same" (PyTorch puts the odd extra pixel last)
                if padding == "same":
                    total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
                    left = [p // 2 for p in total]
                    x = F.pad(x, (left[1], total[1] - left[1], left[0], total[0] - left[0]))
                padding = 0
            cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
            a = cols.transpose(1, 2)  # (B, L, C_in*kh*kw), channel-major like weight.reshape(out, -1)
        else:
            a = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, in)
        if self.has_bias and homogeneous:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)  # homogeneous 1 last
        return a

    def apply(self, x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        r"""The layer's map with :math:`[W \mid b]` replaced by ``M`` (out, in_dim): the
        change of its output along a parameter direction, for forward-mode products."""
        w, *b = self.split(M)
        b = b[0] if b else None
        if isinstance(self.module, nn.Conv2d):
            return self.module._conv_forward(x, w, b)
        return linear_map(x, w, b)

    def out_grads(self, gy: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the layer output -> (B, T, out)."""
        if isinstance(self.module, nn.Conv2d):
            return gy.flatten(2).transpose(1, 2)  # (B, Ho*Wo, out)
        return gy.reshape(gy.shape[0], -1, gy.shape[-1])  # (B, T, out)

    def matrix(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        r"""Per-parameter tensors (weight, bias) -> :math:`[W \mid b]` (out, in_dim); None -> zeros."""
        cols = []
        for p, t in zip(self.params, tensors, strict=True):
            t = torch.zeros_like(p) if t is None else t
            cols.append(t.reshape(self.out_dim, -1))
        return torch.cat(cols, dim=1)

    def split(self, M: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`matrix`: (out, in_dim) -> tensors shaped like ``params``."""
        w = M[:, : self.weight[0].numel()].reshape(self.weight.shape)
        return [w, M[:, -1].reshape(self.module.bias.shape)] if self.has_bias else [w]

    def grad_matrix(self, weight_decay: float = 0.0) -> torch.Tensor:
        r""":math:`[\nabla_W h \mid \nabla_b h]` with :math:`h = L + \frac{\eta}{2}\lVert\theta\rVert^2`."""
        g = self.matrix([p.grad for p in self.params])
        return g + weight_decay * self.matrix([p.detach() for p in self.params]) if weight_decay else g

    def input_factor(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """A from the captured inputs of every call of the layer (in one or several forward passes)."""
        a = _rows([self.patches(x, homogeneous=False) for x in inputs])  # (rows, fan_in)
        M = a.shape[0]  # rows: examples x positions
        A = a.T @ a
        if self.has_bias:  # [a; 1][a; 1]^T without materialising the column of ones
            s = a.sum(0, keepdim=True)  # (1, fan_in)
            A = torch.cat([torch.cat([A, s.T], 1), torch.cat([s, s.new_full((1, 1), M)], 1)], 0)
        return A / M

    def input_rows(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        r"""The rows :math:`R` with :math:`A = R^\top R` (:meth:`input_factor`): the homogeneous
        patches over :math:`\sqrt{\text{rows}}`, (rows, in_dim)."""
        a = _rows([self.patches(x) for x in inputs])
        return a / a.shape[0] ** 0.5

    def output_factor(self, cot_grads: list[list[torch.Tensor]], n_examples: int) -> torch.Tensor:
        """G from, per cotangent k, the per-example output gradients of every call;
        ``n_examples``: the examples of those passes together."""
        G = None
        for grads in cot_grads:
            g = _rows([self.out_grads(gy) for gy in grads])  # (rows, out)
            Gk = g.T @ g
            G = Gk if G is None else G + Gk
        return G / n_examples

    def output_rows(self, cot_grads: list[list[torch.Tensor]], n_examples: int) -> torch.Tensor:
        r"""The rows :math:`R` with :math:`G = R^\top R` (:meth:`output_factor`), (rows, out)."""
        return _rows([self.out_grads(gy) for grads in cot_grads for gy in grads]) / n_examples**0.5

    def batch_factors(
        self, inputs: list[torch.Tensor], cot_grads: list[list[torch.Tensor]], n_examples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, G) of one batch: :meth:`input_factor` and :meth:`output_factor`."""
        return self.input_factor(inputs), self.output_factor(cot_grads, n_examples)


def linear_map(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, w, b)``. For a batch of rows (2-D ``x``) mapped to a few outputs it is computed
    as :math:`(w x^\top)^\top`: on one CPU thread a (256, 2048) batch times a 2048 -> 10 map takes
    0.15 ms that way against 0.24 ms as ``x w^T`` (the same numbers up to rounding)."""
    if x.ndim == 2 and w.shape[0] <= 16:
        return (w @ x.T).T if b is None else torch.addmm(b.unsqueeze(1), w, x.T).T
    return F.linear(x, w, b)


def _rows(xs: list[torch.Tensor]) -> torch.Tensor:
    """(B, T, d) tensors -> one (sum of B*T, d) matrix (no copy for a single one)."""
    xs = [x.reshape(-1, x.shape[-1]) for x in xs]
    return xs[0] if len(xs) == 1 else torch.cat(xs)


def is_supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"


def find_layers(model: nn.Module) -> tuple[list[KFACLayer], list[nn.Parameter]]:
    """K-FAC layers and the remaining trainable parameters (for the fallback optimizer).

    A supported module is a K-FAC layer when its weight is trained. Modules
    whose parameters are shared with another module (tied weights) are left
    to the fallback optimizer.
    """
    candidates = [
        KFACLayer(name, m) for name, m in model.named_modules() if is_supported(m) and m.weight.requires_grad
    ]
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers = [ly for ly in candidates if all(owners[id(p)] == 1 for p in ly.module.parameters())]
    taken = {id(p) for ly in layers for p in ly.params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return layers, rest


def check_model(model: nn.Module, layers: list[KFACLayer]) -> None:
    """A clear error for a model K-FAC cannot train: parameters on the ``meta`` device (no
    values yet), or preconditioned layers in different dtypes or on different devices."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(f"the model has parameters on the meta device ({', '.join(meta[:3])}"
                         f"{', ...' if len(meta) > 3 else ''}): they have no values to train. Materialise it first, "
                         "e.g. model.to_empty(device='cpu') and initialise its weights.")
    for what in ("dtype", "device"):
        kinds: dict[str, list[str]] = {}
        for ly in layers:
            for p in ly.params:
                kinds.setdefault(str(getattr(p, what)), []).append(ly.name)
        if len(kinds) > 1:
            found = "; ".join(f"{k}: {', '.join(sorted(set(v)))}" for k, v in kinds.items())
            raise ValueError(f"K-FAC needs all its layers in one {what}, found {found}. Convert the model with "
                             f"model.to({'torch.float32' if what == 'dtype' else 'device'}) first.")
    if layers and not layers[0].weight.is_floating_point():
        raise ValueError(f"K-FAC needs floating-point weights, got {layers[0].weight.dtype}")
