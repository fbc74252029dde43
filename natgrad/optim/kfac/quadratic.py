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


def output_jvps(
    model: nn.Module, X: torch.Tensor, tangents: list[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Outputs f(X) and :math:`J v` for each tangent (a dict ``param name -> tensor``;
    parameters not named are held fixed). Returns ``(out, [Jv, ...])``, each like ``out``."""
    names = list(tangents[0])
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    primals = tuple(params[n] for n in names)

    def f(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, values, strict=True)), (X,))

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
# captured input already holds); None: the identity
_ACTIVATION_SLOPE: dict[type, Callable[[torch.Tensor], torch.Tensor] | None] = {
    nn.Tanh: lambda y: 1 - y * y,
    nn.Sigmoid: lambda y: y * (1 - y),
    nn.ReLU: lambda y: (y > 0).to(y.dtype),
    nn.Identity: None,
}


def sequential_jvps(
    model: nn.Module, out: torch.Tensor, calls: list[tuple[torch.Tensor, torch.Tensor, Callable]],
    call_modules: list[nn.Module], tangents: list[list[torch.Tensor]],
) -> list[torch.Tensor] | None:
    r"""The fast path of :func:`graph_jvps` for an ``nn.Sequential`` of ``nn.Linear`` layers
    (each called once, all preconditioned) and ``Tanh``/``Sigmoid``/``ReLU``/``Identity``
    activations: forward-mode propagation of the tangent through the captured activations,

    .. math::
        \dot s_\ell = V_\ell \bar a_\ell + W_\ell \dot a_\ell, \qquad
        \dot a_{\ell+1} = \sigma'(s_\ell) \odot \dot s_\ell ,

    with :math:`\sigma'` read off the activation's output. Two matrix products per layer
    and tangent, no backward pass. Returns None when the model is not of that form.
    """
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model)
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    if len(linears) != len(call_modules) or any(a is not b for a, b in zip(linears, call_modules, strict=True)):
        return None
    previous_linear = False
    for m in mods:
        if not isinstance(m, nn.Linear) and (type(m) not in _ACTIVATION_SLOPE or not previous_linear):
            return None  # an unknown module, or two activations in a row
        previous_linear = isinstance(m, nn.Linear)
    slopes = []  # per activation, from its output: the next layer's input (or the model output)
    li = 0
    for m in mods:
        if isinstance(m, nn.Linear):
            li += 1
        else:
            rule = _ACTIVATION_SLOPE[type(m)]
            y = calls[li][0] if li < len(calls) else out.detach()
            slopes.append(None if rule is None else rule(y))
    result = []
    for vs in tangents:
        cur, li, ai = None, 0, 0
        for m in mods:
            if isinstance(m, nn.Linear):
                x, _, apply = calls[li]
                ds = apply(x, vs[li])
                cur = ds if cur is None else ds + cur @ m.weight.detach().T
                li += 1
            else:
                cur = cur if slopes[ai] is None else cur * slopes[ai]
                ai += 1
        result.append(cur)
    return result


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
