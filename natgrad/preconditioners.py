r"""One ideal step, many approximations: the direction each optimizer builds from the
same gradient and the same curvature statistics, measured against the damped
natural gradient :math:`(F + \lambda I)^{-1} g` (Amari 1998).

A :class:`Curvature` holds, for a small model at one point, the gradient
:math:`g` (P,), the exact Fisher :math:`F` (P, P; for a quadratic its Hessian),
the statistic :math:`S` the methods build their preconditioners from (:math:`F`
itself, or the empirical Fisher with the observed labels; Kunstner et al. 2019,
arXiv 1905.12558), the model's weight matrices, K-FAC's block-diagonal
:math:`A \otimes G` matrix and Sophia's Gauss-Newton-Bartlett estimate. Each
method of :data:`METHODS` returns its direction :math:`d` and the symmetric
positive semi-definite matrix :math:`P` behind it (:math:`d = P g` unless said
otherwise); every one but Sophia adds the same :math:`\lambda` to its curvature before
taking its power (Sophia's floor :math:`\epsilon` and its clipping play that part):

======================  =====================================================================
natural gradient        :math:`P = (F + \lambda I)^{-1}`
SGD                     :math:`P = I`
Adam / RMSprop          :math:`P = \operatorname{diag}(s + \lambda)^{-1/2}`, :math:`s = \operatorname{diag} S` (Kingma & Ba 2015)
diagonal Fisher         :math:`P = \operatorname{diag}(s + \lambda)^{-1}`
Sophia                  :math:`d = \operatorname{clip}(g / \max(\gamma \hat h, \epsilon), 1)`, :math:`\hat h = N \hat g \odot \hat g`, :math:`\hat g` the gradient with labels drawn from the model (GNB; Liu et al. 2023, arXiv 2305.14342); :math:`P = \operatorname{diag}(1/\max(\gamma \hat h, \epsilon))`
K-FAC                   :math:`P = (K + \lambda I)^{-1}`, :math:`K = \operatorname{blockdiag}(A_\ell \otimes G_\ell)` (Martens & Grosse 2015, arXiv 1503.05671)
Shampoo -1/4, -1/2      per weight matrix :math:`(L + \lambda)^{-1/p} \otimes (R + \lambda)^{-1/p}`, :math:`p = 4, 2`, with :math:`L, R` the partial traces of :math:`S`'s block (:math:`L = \mathbb{E}[G G^\top]`, :math:`R = \mathbb{E}[G^\top G]`; Gupta et al. 2018, arXiv 1802.09568; Morwani et al. 2025, arXiv 2406.17748); other parameters Adam's diagonal
SOAP                    per weight matrix :math:`Q \operatorname{diag}(s' + \lambda)^{-1/2} Q^\top`, :math:`Q = Q_L \otimes Q_R` the eigenvectors of :math:`L, R`, :math:`s' = \operatorname{diag}(Q^\top S Q)`: Adam's second moment in Shampoo's eigenbasis (Vyas et al. 2024, arXiv 2409.11321)
Muon                    per weight matrix :math:`d = U V^\top` for :math:`G = U \Sigma V^\top` (Jordan et al. 2024; the pairs of nonzero singular values only), the :math:`\lambda \to 0` limit of :math:`(GG^\top + \lambda)^{-1/4} G (G^\top G + \lambda)^{-1/4}`, which is its :math:`P`; other parameters Adam's diagonal
======================  =====================================================================

:func:`measure` reports per method the cosine with the natural gradient, the
relative error of the best multiple of :math:`d` in the :math:`(F + \lambda I)`-norm
(:math:`\sqrt{1 - \rho}`, :math:`\rho` the share of the natural gradient's
predicted decrease of the quadratic model that a line search along :math:`d`
gets), and the eigenvalues of :math:`P (F + \lambda I)` (all 1 for the natural
gradient; their spread is what is left for the learning rate to cope with).
Everything is dense (P x P): for models of a few hundred parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from natgrad.curvature import exact_fisher, kfac_factors, kfac_matrix, param_list
from natgrad.curvature.likelihoods import check_likelihood, sample_targets
from natgrad.optim.linalg import matrix_inverse_root

SOPHIA_GAMMA = 0.01  # Liu et al.'s rho: the step is clipped where |g| > gamma h
SOPHIA_EPS = 1e-12
STATISTICS = ("true", "empirical")


@dataclass(frozen=True)
class MatrixParam:
    """A weight matrix inside the flattened parameter vector (row-major, from ``start``)."""

    name: str
    start: int
    shape: tuple[int, int]

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class Curvature:
    """The same gradient and statistics for every method (module docstring)."""

    g: torch.Tensor  # (P,)
    fisher: torch.Tensor  # (P, P) the reference F
    statistic: torch.Tensor  # (P, P) S, what the preconditioners are built from
    matrices: tuple[MatrixParam, ...] = ()
    kfac: torch.Tensor | None = None  # (P, P) block-diagonal K-FAC matrix from the same statistics
    gnb: torch.Tensor | None = None  # (P,) Sophia's Gauss-Newton-Bartlett estimate

    @property
    def size(self) -> int:
        return self.g.shape[0]


@dataclass(frozen=True)
class Direction:
    d: torch.Tensor  # (P,)
    P: torch.Tensor  # (P, P) symmetric positive semi-definite


def _loss(out: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    if likelihood == "softmax":
        return nn.functional.cross_entropy(out, y)
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def _gradient(model: nn.Module, X: torch.Tensor, y: torch.Tensor, likelihood: str) -> torch.Tensor:
    params = [p for _, p in param_list(model)]
    grads = torch.autograd.grad(_loss(model(X), y, likelihood), params, allow_unused=True)  # unused: gradient 0
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)]
                     ).detach()


def matrices_of(model: nn.Module) -> tuple[MatrixParam, ...]:
    """The 2-D parameters of ``model`` with their place in the flattening."""
    out, start = [], 0
    for name, p in param_list(model):
        if p.ndim == 2:
            out.append(MatrixParam(name, start, (p.shape[0], p.shape[1])))
        start += p.numel()
    return tuple(out)


def from_model(model: nn.Module, X: torch.Tensor, y: torch.Tensor, likelihood: str, *, statistic: str = "true",
               seed: int = 0) -> Curvature:
    """The curvature of a small model on ``(X, y)``: the gradient of the mean loss, the exact true
    Fisher (type-2), the statistic (``"true"``: that Fisher and K-FAC's type-2 factors;
    ``"empirical"``: both with the observed labels) and Sophia's GNB estimate with labels drawn
    from the model by a CPU generator seeded with ``seed``. K-FAC's factors here exist for models of
    ``nn.Linear`` layers only; for any other model (a convolution, say) ``kfac`` is None and
    :func:`measure` leaves K-FAC out, comparing every other method."""
    check_likelihood(likelihood)
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    F = exact_fisher(model, X, y, likelihood=likelihood, kind="true")
    S = F if statistic == "true" else exact_fisher(model, X, y, likelihood=likelihood, kind="empirical")
    try:
        K = kfac_matrix(model, kfac_factors(model, X, y, likelihood=likelihood,
                                            kind="type-2" if statistic == "true" else "empirical"))
    except (ValueError, NotImplementedError):  # a layer natgrad.curvature has no K-FAC factors for
        K = None
    with torch.no_grad():
        out = model(X)
    gen = torch.Generator().manual_seed(seed)  # on the CPU, so every device draws the same labels
    g_hat = _gradient(model, X, sample_targets(out.cpu(), likelihood, gen).to(X.device), likelihood)
    return Curvature(g=_gradient(model, X, y, likelihood), fisher=F, statistic=S, matrices=matrices_of(model),
                     kfac=K, gnb=X.shape[0] * g_hat * g_hat)


def from_quadratic(q) -> Curvature:
    """A :class:`natgrad.tasks.quadratic.KroneckerQuadratic` at its current weights: the
    gradient :math:`A (W - W^\\star) B` and the Hessian :math:`A \\otimes B` as both ``F`` and ``S``
    (no likelihood: no K-FAC factors, no GNB estimate)."""
    H = q.hessian()
    return Curvature(g=q.gradient().reshape(-1), fisher=H, statistic=H,
                     matrices=(MatrixParam("weight", 0, tuple(q.weight.shape)),))


# ------------------------------------------------------------------ methods
def _power(M: torch.Tensor, p: float, lam: float) -> torch.Tensor:
    """:math:`(M + \\lambda I)^{-1/p}` of a symmetric PSD matrix (clamped eigenvalues)."""
    return matrix_inverse_root(M, p, lam)[0]


def _diag(c: Curvature, power: float, lam: float) -> torch.Tensor:
    return (torch.diagonal(c.statistic).clamp_min(0) + lam) ** power


def _factors(c: Curvature, m: MatrixParam) -> tuple[torch.Tensor, torch.Tensor]:
    """Shampoo's :math:`L = \\mathbb{E}[GG^\\top]` and :math:`R = \\mathbb{E}[G^\\top G]`: partial traces of S's block."""
    r, k = m.shape
    B = c.statistic[m.slice, m.slice].reshape(r, k, r, k)  # B[o, i, o', i'] = E[G_oi G_o'i']
    return torch.einsum("aibi->ab", B), torch.einsum("oaob->ab", B)


def _per_matrix(c: Curvature, lam: float, block: Callable[[MatrixParam], torch.Tensor],
                direction: Callable[[MatrixParam], torch.Tensor] | None = None) -> Direction:
    """Block-diagonal ``P``: ``block(m)`` on every weight matrix, Adam's diagonal elsewhere;
    ``direction(m)`` overrides ``P g`` on a matrix."""
    P = torch.diag(_diag(c, -0.5, lam))
    for m in c.matrices:
        P[m.slice] = 0
        P[m.slice, m.slice] = block(m)
    d = P @ c.g
    if direction is not None:
        for m in c.matrices:
            d[m.slice] = direction(m).reshape(-1)
    return Direction(d, P)


def natural_gradient(c: Curvature, lam: float) -> Direction:
    P = _power(c.fisher, 1, lam)
    return Direction(P @ c.g, P)


def sgd(c: Curvature, lam: float) -> Direction:
    return Direction(c.g.clone(), torch.eye(c.size, dtype=c.g.dtype, device=c.g.device))


def adam(c: Curvature, lam: float) -> Direction:
    p = _diag(c, -0.5, lam)
    return Direction(p * c.g, torch.diag(p))


def diagonal_fisher(c: Curvature, lam: float) -> Direction:
    p = _diag(c, -1.0, lam)
    return Direction(p * c.g, torch.diag(p))


def sophia(c: Curvature, lam: float) -> Direction | None:
    if c.gnb is None:
        return None
    p = 1.0 / torch.clamp(SOPHIA_GAMMA * c.gnb, min=SOPHIA_EPS)
    return Direction(torch.clamp(p * c.g, -1.0, 1.0), torch.diag(p))


def kfac(c: Curvature, lam: float) -> Direction | None:
    if c.kfac is None:
        return None
    P = _power(c.kfac, 1, lam)
    return Direction(P @ c.g, P)


def shampoo(p: float) -> Callable[[Curvature, float], Direction]:
    def method(c: Curvature, lam: float) -> Direction:
        def block(m: MatrixParam) -> torch.Tensor:
            L, R = _factors(c, m)
            return torch.kron(_power(L, p, lam), _power(R, p, lam))  # acts on row-major vec(G)

        return _per_matrix(c, lam, block)

    return method


def soap(c: Curvature, lam: float) -> Direction:
    def block(m: MatrixParam) -> torch.Tensor:
        L, R = _factors(c, m)
        Q = torch.kron(torch.linalg.eigh(L)[1], torch.linalg.eigh(R)[1])
        s = torch.einsum("ij,ik,kj->j", Q, c.statistic[m.slice, m.slice], Q).clamp_min(0)  # diag(Q^T S Q)
        return (Q * (s + lam) ** -0.5) @ Q.T

    return _per_matrix(c, lam, block)


def muon(c: Curvature, lam: float) -> Direction:
    def block(m: MatrixParam) -> torch.Tensor:
        G = c.g[m.slice].reshape(m.shape)
        return torch.kron(_power(G @ G.T, 4, lam), _power(G.T @ G, 4, lam))

    def direction(m: MatrixParam) -> torch.Tensor:
        # only the singular pairs of nonzero singular values (numerical rank, as numpy's matrix_rank): the
        # lambda -> 0 limit keeps no direction where G has none (a rank-1 gradient, a zero one)
        U, S, Vh = torch.linalg.svd(c.g[m.slice].reshape(m.shape), full_matrices=False)
        r = int((S > S.max() * max(m.shape) * torch.finfo(S.dtype).eps).sum()) if S.numel() and S.max() > 0 else 0
        return U[:, :r] @ Vh[:r]

    return _per_matrix(c, lam, block, direction)


METHODS: dict[str, Callable[[Curvature, float], Direction | None]] = {
    "natural gradient": natural_gradient,
    "SGD": sgd,
    "Adam / RMSprop": adam,
    "diagonal Fisher": diagonal_fisher,
    "Sophia": sophia,
    "K-FAC": kfac,
    "Shampoo -1/4": shampoo(4),
    "Shampoo -1/2": shampoo(2),
    "SOAP": soap,
    "Muon": muon,
}


# ------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class Measure:
    cosine: float  # with the natural gradient
    relative_error: float  # of the best multiple, in the (F + lambda I)-norm
    eigenvalues: list[float]  # of P (F + lambda I), ascending

    @property
    def condition_number(self) -> float:
        lo = self.eigenvalues[0]
        return self.eigenvalues[-1] / lo if lo > 0 else float("inf")


def measure(c: Curvature, lam: float, methods: dict | None = None) -> dict[str, Measure]:
    """Cosine, relative error and the spectrum of :math:`P(F + \\lambda I)` per applicable method
    (module docstring); ``lam`` must be positive."""
    if not lam > 0:
        raise ValueError(f"the damping lambda must be positive, got {lam}")
    # in float64, with F's eigenvalues clamped at 0 as natural_gradient clamps them: a float32 F is PSD only up to
    # rounding, and F + lambda I with a tiny lambda need not pass a Cholesky factorisation
    f64 = torch.float64
    w, Q = torch.linalg.eigh(c.fisher.to(f64))
    w = w.clamp_min(0) + lam
    F = (Q * w) @ Q.T
    root = Q * w.sqrt()  # F = root root^T
    g = c.g.to(f64)
    ng = Q @ ((Q.T @ g) / w)
    g_ng = float(g @ ng)
    out = {}
    for name, method in (methods or METHODS).items():
        r = method(c, lam)
        if r is None:
            continue
        d, P = r.d.to(f64), r.P.to(f64)
        dn = float(torch.linalg.norm(d) * torch.linalg.norm(ng))
        cos = min(1.0, max(-1.0, float(d @ ng) / dn)) if dn > 0 else 0.0  # rounding can pass 1
        dFd = float(d @ F @ d)
        captured = float(g @ d) ** 2 / (dFd * g_ng) if dFd > 0 and g_ng > 0 else 0.0
        M = root.T @ P @ root  # eig of P F = eig of root^T P root
        ev = torch.linalg.eigvalsh((M + M.T) / 2).clamp_min(0)
        out[name] = Measure(cos, max(0.0, 1.0 - captured) ** 0.5, ev.tolist())
    return out


def muon_as_shampoo(m: int = 24, n: int = 16, seed: int = 0, epsilon: float = 1e-12) -> dict:
    r"""Muon's :math:`U V^\top` against Shampoo's :math:`-1/4` step with its statistics from this
    gradient alone, on one random :math:`m \times n` matrix :math:`G = U \Sigma V^\top` (float64):

    :math:`(GG^\top)^{-1/4} G (G^\top G)^{-1/4} = U\Sigma^{-1/2}U^\top U \Sigma V^\top V \Sigma^{-1/2} V^\top = U V^\top`.

    Shampoo's step is the first step of :class:`natgrad.optim.Shampoo` (summed statistics
    start at zero, so they hold only :math:`G`: no accumulation; no momentum, no grafting,
    ``epsilon`` relative to the largest eigenvalue); Muon's is one step of
    ``torch.optim.Muon`` (momentum 0, five Newton-Schulz steps in bfloat16), divided by its
    shape factor :math:`\sqrt{\max(1, m/n)}`. Returns both differences from :math:`U V^\top`
    (largest entry) and the singular values of :math:`G` and of the three updates.
    """
    from natgrad.optim import Shampoo

    g = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=g, dtype=torch.float64)
    U, sigma, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh

    def one_step(make) -> torch.Tensor:
        W = nn.Parameter(torch.zeros(m, n, dtype=torch.float64))
        W.grad = G.clone()
        make([W]).step()
        return -W.detach()

    shampoo_step = one_step(lambda ps: Shampoo(ps, lr=1.0, beta1=0.0, grafting=None, epsilon=epsilon,
                                               epsilon_mode="relative", start_preconditioning_step=1))
    muon_step = one_step(lambda ps: torch.optim.Muon(ps, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0))
    muon_step = muon_step / max(1.0, m / n) ** 0.5

    def sv(A: torch.Tensor) -> list[float]:
        return torch.linalg.svdvals(A).tolist()

    return dict(m=m, n=n, seed=seed, epsilon=epsilon,
                shampoo_vs_polar=float((shampoo_step - polar).abs().max()),
                muon_vs_polar=float((muon_step - polar).abs().max()),
                muon_cosine=float((muon_step * polar).sum() / (muon_step.norm() * polar.norm())),
                singular_values={"G": sigma.tolist(), "U V^T": sv(polar), "Shampoo -1/4, no accumulation":
                                 sv(shampoo_step), "torch.optim.Muon": sv(muon_step)})


def measure_along(curvatures: list[Curvature], lam: float, threads: int = 1) -> list[dict[str, Measure]]:
    """:func:`measure` at each of several points (e.g. along training), on ``threads`` CPU
    threads (restored afterwards: a few hundred small dense problems run fastest on one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [measure(c, lam) for c in curvatures]
    finally:
        torch.set_num_threads(previous)
