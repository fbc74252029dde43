r"""The exact-Fisher quadratic model K-FAC uses to pick its step (Martens & Grosse 2015, s. 7).

On the current batch, with :math:`J` the Jacobian of the network outputs
w.r.t. the preconditioned parameters and :math:`H_n` the Hessian of the
per-example loss w.r.t. the outputs (``gaussian``: :math:`I`; ``softmax``:
:math:`\operatorname{diag}(p) - pp^\top`), the Fisher/GGN is
:math:`F = \frac1N \sum_n J_n^\top H_n J_n` and the model of the change in
:math:`h = L + \frac\eta2\lVert\theta\rVert^2` is

.. math::
    M(d) = \nabla h^\top d + \tfrac12 d^\top (F + (\lambda + \eta) I)\, d .

Only quadratic forms :math:`u^\top F v = \frac1N \sum_n (J_n u)^\top H_n (J_n v)`
are needed, so each direction costs one product :math:`J v`: :func:`graph_jvps`
reuses the autograd graph of the step's forward pass (double backward, no second
forward); :func:`output_jvps` is the plain ``torch.func.jvp`` version (a fresh forward
per direction); :func:`ggn_vp` (jvp then vjp) gives the full product :math:`F v` for
tests and labs.

Step coefficients: with proposal :math:`\Delta` and previous update
:math:`\delta_0`, minimise :math:`M(\alpha\Delta + \mu\delta_0)` over
:math:`(\alpha, \mu)`:

.. math::
    \begin{pmatrix} \Delta^\top C \Delta & \Delta^\top C \delta_0 \\ \delta_0^\top C \Delta & \delta_0^\top C \delta_0 \end{pmatrix}
    \begin{pmatrix} \alpha \\ \mu \end{pmatrix} = -\begin{pmatrix} \nabla h^\top \Delta \\ \nabla h^\top \delta_0 \end{pmatrix},
    \qquad C = F + (\lambda + \eta) I ;

without a previous update (or without momentum) :math:`\mu = 0`,
:math:`\alpha = -\nabla h^\top\Delta / \Delta^\top C \Delta`.

References: Martens & Grosse, ICML 2015, arXiv 1503.05671, section 7;
Schraudolph, Neural Computation 2002 (Gauss-Newton vector products).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from natgrad.optim.kfac.layers import linear_map


def output_jvps(
    model: nn.Module, X: torch.Tensor | tuple, tangents: list[dict[str, torch.Tensor]],
    kwargs: dict | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Outputs f(X) and :math:`J v` for each tangent (a dict ``param name -> tensor``;
    parameters not named are held fixed). ``X``: the input, or a tuple of positional
    arguments (with ``kwargs``). Returns ``(out, [Jv, ...])``, each like ``out``."""
    names = list(tangents[0])
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    primals = tuple(params[n] for n in names)
    args = X if isinstance(X, tuple) else (X,)

    def f(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, values, strict=True)), args, kwargs or {})

    out, jvps = None, []
    for tan in tangents:
        out, jv = jvp(f, primals, tuple(tan[n] for n in names))
        jvps.append(jv)
    return out, jvps


def graph_jvps(
    out: torch.Tensor, calls: list[tuple[torch.Tensor, torch.Tensor, Callable]], tangents: list[list[torch.Tensor]]
) -> list[torch.Tensor]:
    r""":math:`J v` for each tangent from the autograd graph of a forward pass already made.

    ``calls``: one ``(layer input x, layer output s, apply)`` per call of a preconditioned
    layer in that pass, with ``apply(x, V)`` the layer's map under parameters ``V``;
    ``tangents[k][i]`` is the direction ``V`` of call ``i``'s layer. The network output is
    linear in each layer output's perturbation, so with :math:`u` a dummy output cotangent

    .. math::
        J v = \frac{\partial}{\partial u} \sum_i \big\langle J_{s_i}^\top u,\ \mathrm{apply}_i(x_i, V_i) \big\rangle

    (the "double backward" trick): one backward with ``create_graph`` shared by all tangents,
    then one cheap backward per tangent; no second forward pass. The graph of ``out`` must
    still be alive (``retain_graph``). Equals :func:`output_jvps` for the same directions.
    """
    u = torch.zeros_like(out, requires_grad=True)
    outs = [s for _, s, _ in calls]
    vjps = torch.autograd.grad(out, outs, grad_outputs=u, create_graph=True, allow_unused=True)  # J_s^T u
    result = []
    for vs in tangents:
        inner = sum((g * apply(x.detach(), V)).sum() for g, (x, _, apply), V in zip(vjps, calls, vs, strict=True)
                    if g is not None)
        (jv,) = torch.autograd.grad(inner, u, retain_graph=True)
        result.append(jv.detach())
    return result


# d(activation)/d(input) written through the activation's output y (which the next layer's
# captured input usually already holds)
_ACTIVATION_SLOPE: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda y: 1 - y * y,
    nn.Sigmoid: lambda y: y * (1 - y),
    nn.ReLU: torch.sign,  # y = relu(s) >= 0, so sign(y) is the 0/1 mask in y's dtype (8x faster than (y > 0).to)
}
# linear maps that only move entries around: the tangent goes through them unchanged in kind
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity)


def sequential_supported(model: nn.Module, call_modules: list[nn.Module]) -> bool:
    """Whether :func:`sequential_jvps` handles ``model`` with these preconditioned calls: a plain
    ``nn.Sequential`` whose preconditioned layers are each called once, in order, with only
    parameter-free modules before the first of them and, after it, only ``Tanh``/``Sigmoid``/
    ``ReLU`` activations and ``Flatten``/``Unflatten``/``Identity`` reshapes between layers."""
    if type(model) is not nn.Sequential:
        return False
    ids = {id(m) for m in call_modules}
    mods = list(model)
    layers = [m for m in mods if id(m) in ids]
    if len(layers) != len(call_modules) or any(a is not b for a, b in zip(layers, call_modules, strict=True)):
        return False
    seen_layer = False
    for m in mods:
        if id(m) in ids:
            seen_layer = True
        elif not seen_layer:
            if any(True for _ in m.parameters()):
                return False
        elif type(m) not in _ACTIVATION_SLOPE and not isinstance(m, _SHAPE_MODULES):
            return False
    return True


def sequential_jvps(
    model: nn.Module, out: torch.Tensor, calls: list[tuple[torch.Tensor, torch.Tensor, Callable]],
    call_modules: list[nn.Module], tangents: list[list[torch.Tensor]],
) -> list[torch.Tensor] | None:
    r"""The fast path of :func:`graph_jvps` for the models of :func:`sequential_supported`
    (MLPs and plain convnets): forward-mode propagation of the tangent through the
    captured layer inputs and outputs,

    .. math::
        \dot s_\ell = V_\ell \bar a_\ell + W_\ell \dot a_\ell, \qquad
        \dot a_{\ell+1} = \sigma'(s_\ell) \odot \dot s_\ell ,

    with :math:`\sigma'` read off the activation's output (for a
    convolution :math:`V \bar a` and :math:`W \dot a` are convolutions). Two layer maps per
    layer and tangent, no backward pass. Returns None when the model is not of that form.
    ``out`` is unused but kept for the signature of :func:`graph_jvps`.
    """
    if not sequential_supported(model, call_modules):
        return None
    ids = {id(m): i for i, m in enumerate(call_modules)}
    mods = list(model)
    # the primal value after each module from the first layer on (layer outputs and the next
    # layers' inputs are captured; only activations not followed by a layer are recomputed)
    plan: list[tuple[str, object]] = []
    val = None
    for k, m in enumerate(mods):
        if id(m) in ids:
            li = ids[id(m)]
            val = calls[li][1].detach()
            plan.append(("layer", li))
        elif val is None:
            continue  # before the first layer: acts on the data only
        elif isinstance(m, _SHAPE_MODULES):
            val = m(val)
            plan.append(("shape", m))
        else:
            nxt = mods[k + 1] if k + 1 < len(mods) else None
            val = calls[ids[id(nxt)]][0] if nxt is not None and id(nxt) in ids else m(val)
            plan.append(("slope", _ACTIVATION_SLOPE[type(m)](val)))
    result = []
    for vs in tangents:
        cur = None
        for kind, what in plan:
            if kind == "layer":
                x, _, apply = calls[what]
                mod = call_modules[what]
                ds = apply(x, vs[what])  # a fresh tensor: updated in place below
                if cur is not None:
                    ds.add_(_weight_map(mod, cur))
                cur = ds
            elif kind == "shape":
                cur = what(cur)
            else:
                cur = cur.mul_(what)
        result.append(cur)
    return result


def _weight_map(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's map without its bias (the change of its output for a change of its input)."""
    if isinstance(m, nn.Conv2d):
        return m._conv_forward(x, m.weight.detach(), None)
    return linear_map(x, m.weight.detach())


def ggn_inner(u: torch.Tensor, v: torch.Tensor, out: torch.Tensor, likelihood: str) -> torch.Tensor:
    r""":math:`\frac1N \sum_n u_n^\top H_n v_n` for output-space vectors ``u, v`` (N, ...) at outputs ``out``."""
    N = out.shape[0]
    if likelihood == "gaussian":
        return (u * v).sum() / N
    if likelihood == "softmax":
        p = torch.softmax(out, dim=-1)  # (N, C)
        return ((u * p * v).sum() - ((p * u).sum(-1) * (p * v).sum(-1)).sum()) / N
    raise ValueError(f"unknown likelihood {likelihood!r}")


def output_hessian_vp(v: torch.Tensor, out: torch.Tensor, likelihood: str) -> torch.Tensor:
    r""":math:`H_n v_n` for every example: (N, ...)."""
    if likelihood == "gaussian":
        return v
    p = torch.softmax(out, dim=-1)
    return p * v - p * (p * v).sum(-1, keepdim=True)


def ggn_vp(model: nn.Module, X: torch.Tensor, v: dict[str, torch.Tensor], likelihood: str) -> dict[str, torch.Tensor]:
    r"""Exact GGN (= Fisher) vector product :math:`F v = \frac1N J^\top H J v` (jvp, then vjp).

    ``v``: dict ``param name -> tensor``; the result has the same keys.
    """
    names = list(v)
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}

    def f(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, values, strict=True)), (X,))

    primals = tuple(params[n] for n in names)
    out, Jv = jvp(f, primals, tuple(v[n] for n in names))
    _, pullback = vjp(f, *primals)
    Fv = pullback(output_hessian_vp(Jv, out.detach(), likelihood) / out.shape[0])
    return dict(zip(names, Fv, strict=True))


def step_coefficients(
    FDD: float, gD: float, FDd: float | None = None, Fdd: float | None = None, gd: float | None = None
) -> tuple[float, float]:
    r"""Minimiser :math:`(\alpha, \mu)` of the 2-D quadratic model (entries already include the damping).

    ``FDD`` = :math:`\Delta^\top C\Delta`, ``gD`` = :math:`\nabla h^\top\Delta`, and for the momentum
    direction ``FDd``, ``Fdd``, ``gd``. Falls back to the 1-D solution when the 2x2 system is
    (nearly) singular, and to :math:`(0, 0)` when :math:`\Delta^\top C\Delta \le 0`.
    """
    if not FDD > 0:
        return 0.0, 0.0
    if FDd is None or Fdd is None or gd is None or not Fdd > 0:
        return -gD / FDD, 0.0
    det = FDD * Fdd - FDd * FDd
    if not det > 1e-10 * FDD * Fdd:
        return -gD / FDD, 0.0
    alpha = (-gD * Fdd + FDd * gd) / det
    mu = (-gd * FDD + FDd * gD) / det
    return alpha, mu


def model_change(
    alpha: float, mu: float, FDD: float, gD: float, FDd: float = 0.0, Fdd: float = 0.0, gd: float = 0.0
) -> float:
    r""":math:`M(\alpha\Delta + \mu\delta_0) - M(0)` from the same entries as :func:`step_coefficients`."""
    return alpha * gD + mu * gd + 0.5 * (alpha * alpha * FDD + 2 * alpha * mu * FDd + mu * mu * Fdd)
