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
and the output layer go to AdamW. Here the Muon part is ``torch.optim.Muon``
(torch 2.13) and the rest ``torch.optim.AdamW``; :class:`MuonAdam` drives both
as one optimizer.
"""

from __future__ import annotations

import torch

from natgrad.optim.stepping import warn_on_manifold

OUTPUT_LAYER = ("adam", "muon")


def split_parameters(named_params, output_layer: str = "adam") -> tuple[list, list]:
    """``(muon, adam)`` lists of ``(name, parameter)``: every 2-D parameter goes to Muon
    except the last one (the output layer) when ``output_layer="adam"``; all others
    (biases, convolution kernels, scalars) go to AdamW."""
    if output_layer not in OUTPUT_LAYER:
        raise ValueError(f"output_layer must be one of {OUTPUT_LAYER}, got {output_layer!r}")
    named = [(n, p) for n, p in named_params if p.requires_grad]
    matrices = [i for i, (_, p) in enumerate(named) if p.ndim == 2]
    if output_layer == "adam" and matrices:
        matrices = matrices[:-1]
    chosen = set(matrices)
    return [named[i] for i in sorted(chosen)], [x for i, x in enumerate(named) if i not in chosen]


class MuonAdam:
    r"""``torch.optim.Muon`` on the hidden 2-D weights and ``torch.optim.AdamW`` on the rest
    (module docstring), stepped, zeroed and checkpointed together.

    Args:
        named_params: ``model.named_parameters()``.
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
