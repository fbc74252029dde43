r"""Muon for the hidden 2-D weights, AdamW for everything else, as Muon's authors use it.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/; Liu et al.
2025, arXiv 2502.16982) updates a weight matrix :math:`W` with

.. math::

    B_t = \mu B_{t-1} + G_t,\qquad \tilde B_t = G_t + \mu B_t \ (\text{Nesterov}),\qquad
    W_t = W_{t-1} - \eta\, s\, \operatorname{NS}_5(\tilde B_t),

where :math:`\operatorname{NS}_5` is five quintic Newton-Schulz iterations that
push every singular value of :math:`\tilde B_t / \lVert\tilde B_t\rVert_F`
towards 1, approximating the orthogonal polar factor :math:`U V^\top` of
:math:`\tilde B_t = U S V^\top`, and :math:`s = \sqrt{\max(1, m/n)}` for an
:math:`m \times n` matrix. :math:`U V^\top = (G G^\top)^{-1/4} G (G^\top G)^{-1/4}`
is Shampoo's step (Gupta et al. 2018, arXiv 1802.09568) with statistics from
this one matrix (see :func:`natgrad.preconditioners.muon_as_shampoo`).

The authors apply it to hidden-layer matrices only; biases, gains, embeddings
and the output layer go to AdamW (:func:`split_parameters`; embeddings only when
:class:`MuonAdam` is given the model itself). Here the Muon part is ``torch.optim.Muon``
(torch 2.13) and the rest ``torch.optim.AdamW``; :class:`MuonAdam` drives both
as one optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from natgrad.optim.stepping import warn_on_manifold

OUTPUT_LAYER = ("adam", "muon")


def split_parameters(named_params, output_layer: str = "adam") -> tuple[list, list]:
    """``(muon, adam)`` lists of ``(name, parameter)`` of the trainable parameters.

    ``named_params`` is a model (``nn.Module``) or its ``named_parameters()``. Muon gets the 2-D
    parameters except, when ``output_layer="adam"``, the last one registered (the output layer);
    AdamW gets the rest (biases, gains, convolution kernels, scalars). Given the model, the weights
    of its ``nn.Embedding`` / ``nn.EmbeddingBag`` modules go to AdamW too, and so does an output
    layer tied to one (then no other matrix is taken for the output layer); from names alone an
    embedding cannot be told from a hidden matrix, so pass the model when it has embeddings."""
    if output_layer not in OUTPUT_LAYER:
        raise ValueError(f"output_layer must be one of {OUTPUT_LAYER}, got {output_layer!r}")
    model = named_params if isinstance(named_params, nn.Module) else None
    items = list(model.named_parameters() if model is not None else named_params)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise TypeError("MuonAdam needs the model or model.named_parameters() ((name, parameter) pairs), not "
                            f"{type(item).__name__} items such as model.parameters() gives: it tells the output "
                            "layer and the embeddings from the hidden matrices")
    named = [(n, p) for n, p in items if p.requires_grad]
    embedding = {id(m.weight) for m in (model.modules() if model is not None else ())
                 if isinstance(m, nn.Embedding | nn.EmbeddingBag)}
    matrices = [i for i, (_, p) in enumerate(named) if p.ndim == 2 and id(p) not in embedding]
    tied = model is not None and any(isinstance(m, nn.Linear) and id(m.weight) in embedding for m in model.modules())
    if output_layer == "adam" and matrices and not tied:
        matrices = matrices[:-1]
    chosen = set(matrices)
    return [named[i] for i in sorted(chosen)], [x for i, x in enumerate(named) if i not in chosen]


class MuonAdam:
    r"""``torch.optim.Muon`` on the hidden 2-D weights and ``torch.optim.AdamW`` on the rest
    (module docstring), stepped, zeroed and checkpointed together.

    Args:
        named_params: the model, or ``model.named_parameters()`` (see :func:`split_parameters`: only
            the model lets embeddings go to AdamW).
        lr, momentum, nesterov, weight_decay, ns_steps: Muon's (torch.optim.Muon).
        adam_lr, adam_betas, adam_eps, adam_weight_decay: AdamW's for the other parameters.
        output_layer: ``"adam"`` (the authors' choice) or ``"muon"``.
    """

    def __init__(self, named_params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, adam_lr: float = 1e-3,
                 adam_betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 adam_weight_decay: float = 0.0, output_layer: str = "adam"):
        muon, adam = split_parameters(named_params, output_layer)
        if not muon:
            raise ValueError("this model has no hidden 2-D weight for Muon (torch.optim.Muon takes matrices only; "
                             "convolution kernels, biases and the output layer go to AdamW)")
        self.muon = torch.optim.Muon([p for _, p in muon], lr=lr, momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay, ns_steps=ns_steps)
        self.adam = (torch.optim.AdamW([p for _, p in adam], lr=adam_lr, betas=adam_betas, eps=adam_eps,
                                       weight_decay=adam_weight_decay) if adam else None)
        self.muon_names, self.adam_names = [n for n, _ in muon], [n for n, _ in adam]
        warn_on_manifold(self)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adam) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adam": None if self.adam is None else self.adam.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        if self.adam is not None:
            self.adam.load_state_dict(state_dict["adam"])

    def stats(self) -> dict:
        count = lambda o: sum(p.numel() for g in o.param_groups for p in g["params"])  # noqa: E731
        return dict(muon_parameters=count(self.muon), adam_parameters=0 if self.adam is None else count(self.adam))
