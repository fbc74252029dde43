r"""K-FAC Kronecker factors for ``nn.Linear`` layers.

For a linear layer :math:`s = W a + b` (W: (out, in)) write :math:`\bar a = [a; 1]`
(the homogeneous 1 appended LAST, only when the layer has a bias) and
:math:`\bar W = [W \mid b]` (out, in+1). The per-example gradient is
:math:`\nabla_{\bar W} \ell = g \bar a^\top` with :math:`g = \partial \ell / \partial s`,
so the exact Fisher block of one example is :math:`(\bar a \bar a^\top) \otimes (g g^\top)`
in column-stacking order :math:`\mathrm{vec}(\bar W)`. K-FAC (Martens & Grosse 2015,
eq. 1-3) replaces the expectation of the Kronecker product by the Kronecker
product of expectations:

.. math::
    F_\ell \approx A \otimes G, \quad
    A = \frac1N \sum_n \bar a_n \bar a_n^\top \ (\text{in}+1, \text{in}+1), \quad
    G = \frac1N \sum_n \mathbb{E}[g_n g_n^\top] \ (\text{out}, \text{out}).

Scaling: :math:`g_n` is the gradient of the *per-example* loss (not of the
batch mean), so for N = 1 the product :math:`A \otimes G` is exactly the Fisher
block of that example. The matrix :math:`A \otimes G` is in column-stacking
order of :math:`\bar W`; :func:`natgrad.curvature.blocks.kfac_block` permutes it
to our flattening (W row-major, then b).

The expectation in G:

* ``"type-2"``: exact, :math:`\mathbb{E}[gg^\top] = \sum_k (J_s^\top S_{:k})(J_s^\top S_{:k})^\top`
  with :math:`SS^\top = \nabla_f^2 \ell` (one backward pass per column of S;
  Botev, Ritter & Barber 2017 call the result KFLR; curvlinops ``fisher_type="type-2"``);
* ``"mc"``: ``mc_samples`` targets drawn from the model, averaged
  (Martens & Grosse 2015, section 5);
* ``"empirical"``: the observed targets ``y`` (empirical Fisher; Kunstner et al. 2019).

Implementation: a zero "probe" is added to every Linear output through a
forward hook; ``torch.func.vjp`` w.r.t. the probes gives
:math:`\partial \ell/\partial s` for all examples at once (examples are
independent in an MLP), and ``vmap`` runs it over the columns of S / over samples.

Only ``nn.Linear`` acting on (N, in) inputs is supported (no Conv2d, no
weight sharing). References: Martens & Grosse, ICML 2015, arXiv 1503.05671;
Botev, Ritter & Barber, ICML 2017, arXiv 1706.03662; Eschenhagen et al.,
NeurIPS 2023, arXiv 2311.00636; Dangel et al., curvlinops.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from natgrad.curvature.likelihoods import check_likelihood, output_grads, output_hessian_sqrt, sample_targets
from natgrad.curvature.params import param_list, require_independent_examples

KFAC_KINDS = ("type-2", "mc", "empirical")


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules of ``model`` in ``named_modules()`` order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def kfac_factors(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    likelihood: str = "softmax",
    kind: str = "type-2",
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    r"""K-FAC factors ``{layer_name: (A, G)}`` for every ``nn.Linear`` in ``model``.

    :math:`A = \frac1N\sum_n \bar a_n \bar a_n^\top` with :math:`\bar a_n = [a_n; 1]`
    (``(in+1, in+1)`` if the layer has a bias, else ``(in, in)``);
    :math:`G = \frac1N\sum_n \mathbb{E}[g_n g_n^\top]` (``(out, out)``), :math:`g_n` the
    gradient of the per-example loss w.r.t. the layer's pre-activation output.

    ``kind``: ``"type-2"`` (exact expectation via the output-Hessian factor
    :math:`S`, softmax :math:`S = \mathrm{diag}(\sqrt p) - p\sqrt p^\top`, gaussian
    :math:`S = I`), ``"mc"`` (``mc_samples`` targets sampled from the model per
    example; the m-th draw is one full-batch ``multinomial``/``randn`` call on
    ``generator``), or ``"empirical"`` (observed ``y``).

    For one example, ``kfac_block(A, G, has_bias)`` equals the exact Fisher
    block of the layer. A layer the forward pass does not call (an unused head) gets zero factors,
    as its exact Fisher block is zero. Conventions match curvlinops' ``KFACLinearOperator``
    with ``separate_weight_and_bias=False`` and a ``reduction="mean"``
    ``CrossEntropyLoss`` (for ``MSELoss(reduction="sum")`` curvlinops' G is 2N
    times ours for type-2/mc and 4N times for empirical).
    """
    check_likelihood(likelihood)
    if kind not in KFAC_KINDS:
        raise ValueError(f"kind must be one of {KFAC_KINDS}, got {kind!r}")
    if kind == "empirical" and y is None:
        raise ValueError("the empirical K-FAC factors need the observed targets y")
    layers = linear_layers(model)
    if not layers:
        return {}
    require_independent_examples(model)
    names = [n for n, _ in layers]
    params = {n: p.detach() for n, p in param_list(model)}
    X = X.detach()  # the factors carry no autograd graph
    N = X.shape[0]

    state: dict[str, object] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            if output.ndim != 2:
                raise NotImplementedError(
                    f"K-FAC here supports Linear layers on (N, in) inputs; {name!r} got {tuple(inputs[0].shape)}"
                )
            if name in state["inputs"]:
                raise NotImplementedError(f"Linear layer {name!r} is called more than once per forward pass")
            state["inputs"][name] = inputs[0]
            return output + state["probes"][name]

        return hook

    def f(*probes: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        state["probes"] = dict(zip(names, probes, strict=True))
        state["inputs"] = {}
        out = functional_call(model, params, (X,))
        return out, dict(state["inputs"])

    probes = tuple(torch.zeros(N, m.out_features, dtype=X.dtype, device=X.device) for _, m in layers)
    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers]
    try:
        out, vjp_fn, inputs = vjp(f, *probes, has_aux=True)
    finally:
        for h in handles:
            h.remove()
    out = out.detach()  # (N, C)

    if kind == "type-2":
        cot = output_hessian_sqrt(out, likelihood).permute(2, 0, 1)  # (K, N, C): column k of S_n
    elif kind == "mc":
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        t = sample_targets(out, likelihood, generator, num_draws=mc_samples).flatten(0, 1)  # (M*N, ...)
        cot = (
            output_grads(out.repeat(mc_samples, 1), t, likelihood).reshape(mc_samples, N, -1) / mc_samples**0.5
        )  # (M, N, C)
    else:
        cot = output_grads(out, y, likelihood).unsqueeze(0)  # (1, N, C)

    grads = vmap(vjp_fn)(cot)  # tuple over layers of (K, N, out)

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for (name, module), g in zip(layers, grads, strict=True):
        if name not in inputs:  # a layer the forward pass never calls: no statistics, as its Fisher block is 0
            width = module.in_features + (module.bias is not None)
            factors[name] = (X.new_zeros(width, width), X.new_zeros(module.out_features, module.out_features))
            continue
        a = inputs[name].detach()  # (N, in)
        if module.bias is not None:
            a = torch.cat([a, a.new_ones(N, 1)], dim=1)  # (N, in+1), homogeneous 1 last
        A = a.T @ a / N
        g = g.reshape(-1, g.shape[-1])  # (K*N, out)
        G = g.T @ g / N
        factors[name] = (A, G.detach())
    return factors
