r"""The open probability simplex with the Fisher-Rao metric, as a ``geoopt`` manifold.

    from natgrad.optim.riemannian import ProbabilitySimplex, RiemannianSGD
    simplex = ProbabilitySimplex()
    p = geoopt.ManifoldParameter(torch.full((3,), 1 / 3), manifold=simplex)
    opt = RiemannianSGD([p], lr=0.5)   # the Fisher-Rao natural gradient, retracted

The manifold is :math:`\Delta = \{p \in \mathbb{R}^k : p_i > 0,\ \sum_i p_i = 1\}`, the
categorical distributions on ``k`` outcomes (the last axis of a tensor; leading axes
are a batch of independent simplices). Every tangent space is the same subspace
:math:`T_p\Delta = \{u : \sum_i u_i = 0\}`.

Formulas (``g`` is the Euclidean gradient, products and quotients elementwise):

* metric (the Fisher information of a categorical distribution; Amari & Nagaoka
  2000, sec. 2.2): :math:`\langle u, v\rangle_p = \sum_i u_i v_i / p_i`;
* tangent projection, orthogonal for that metric (the normal direction is
  :math:`p` itself, since :math:`\langle p, u\rangle_p = \sum_i u_i`):
  :math:`P_p(u) = u - (\sum_i u_i)\, p`;
* Riemannian gradient, :math:`P_p` applied to :math:`G(p)^{-1} g = p \odot g`
  (Absil, Mahony & Sepulchre 2008, eq. 3.37): :math:`\operatorname{grad} f(p) =
  p \odot (g - \langle p, g\rangle)`, the natural gradient of Amari (1998);
* retraction (Sun, Gao, Hong, Mishra & Yin 2015, arXiv 1504.01777, used by Manopt's
  multinomial manifold): :math:`R_p(u) = p \odot e^{u / p} / \sum_j p_j e^{u_j / p_j}`.
  It keeps every :math:`p_i > 0` and :math:`\sum p = 1` for any ``u``; :math:`R_p(0) = p`
  and :math:`\tfrac{d}{dt} R_p(tu)|_{0} = u - p \sum_i u_i = u`, so it is a retraction in the
  sense of Absil et al. (2008, def. 4.1.1). Applied to :math:`-\eta \operatorname{grad} f`
  it is the exponentiated-gradient update :math:`p \odot e^{-\eta g} / Z` (Kivinen &
  Warmuth 1997);
* exponential map, exact: :math:`z = 2\sqrt{p}` maps :math:`(\Delta, \langle\cdot,\cdot\rangle_p)`
  isometrically onto the positive orthant of the sphere of radius 2 (Amari & Nagaoka
  2000, sec. 2.5), with :math:`dz = u / \sqrt{p}`. The geodesic is the great circle
  :math:`z(t) = \cos(t\lVert w\rVert/2)\, z + 2 \sin(t \lVert w\rVert/2)\, w / \lVert w\rVert`,
  :math:`w = u/\sqrt{p}`, :math:`\lVert w\rVert = \lVert u\rVert_p`, read back as
  :math:`p(t) = z(t)^2 / 4`;
* distance: :math:`d(p, q) = 2 \arccos \sum_i \sqrt{p_i q_i}`, computed as
  :math:`4 \arcsin(\lVert \sqrt p - \sqrt q \rVert / 2)`, the same number, accurate for
  close points; :meth:`logmap` inverts :meth:`expmap` through the same sphere;
* vector transport: every tangent space is the same subspace :math:`\{u : \sum_i u_i = 0\}`, but a
  vector does not mean the same step everywhere: the retraction moves :math:`\log p` by :math:`u / p`.
  :class:`ProbabilitySimplex` carries a vector by the differential of its retraction (Absil et al.
  2008, sec. 8.1.2), :math:`\mathcal{T}_{p \to q}(v) = P_q(q \odot v / p)` for :math:`q = R_p(u)`, which
  keeps :math:`v/p`, the step in :math:`\log p`. :class:`ProbabilitySimplexExact` keeps the vector
  itself (:math:`P_q(v) = v`). Neither is the parallel transport. geoopt's ``RiemannianSGD`` with
  momentum and ``RiemannianAdam`` carry their momentum this way (Becigneul & Ganea 2019, arXiv
  1810.00760; Bonnabel 2013, arXiv 1111.5280, for Riemannian SGD with a retraction). With the identity
  here, a momentum built where :math:`p_i` was 0.1 moved :math:`\log p_i` ten times too far once
  :math:`p_i` was 0.01, and so on down to the face. With momentum 0.9 and learning rate 0.01,
  fitting a categorical distribution by cross-entropy from 12 random starts failed 10 times out of 12
  with the identity and never with this transport (tests/natgrad/optim/riemannian/test_simplex.py).
  Use :class:`natgrad.optim.riemannian.RiemannianSGD` for momentum: geoopt 0.5.1's starts its
  buffer from the *Euclidean* gradient, :math:`-q/p` for a cross-entropy, against a natural gradient
  of :math:`p - q`.

Leaving the orthant. The open simplex is not complete: a geodesic reaches a face
(some :math:`p_i = 0`) in finite time. :meth:`expmap` does not stop there; it returns
:math:`z(1)^2/4` for the whole great circle, which is the geodesic *reflected* at the
face it meets, like a billiard ball (squaring folds the sphere onto its positive
orthant, so a coordinate of :math:`z` that turns negative comes back as a positive
:math:`p_i`). Up to the face the result is the exact exponential map; after it, it is
the geodesic of the simplex seen as the sphere modulo sign changes, continuous in
``u`` and always a distribution. A coordinate that lands exactly on the face is lifted
to ``floor`` and the point renormalised, so every result is in the open simplex.

:meth:`projx` is the Euclidean projection onto :math:`\{p : p_i \ge \text{floor},
\sum_i p_i = 1\}` (sort-based: Held, Wolfe & Crowder 1974; Duchi et al. 2008), what
projected Euclidean gradient descent uses.
"""

from __future__ import annotations

import geoopt
import torch

__all__ = ["ProbabilitySimplex", "ProbabilitySimplexExact", "project_onto_simplex"]

FLOOR = 1e-12  # smallest coordinate a result may have: keeps log p and 1/p finite in float32 and float64


def project_onto_simplex(x: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    r"""Euclidean projection of each row (last axis) onto :math:`\{p : p_i \ge \text{floor}, \sum_i p_i = 1\}`.

    With :math:`p = \text{floor} + y`, this projects :math:`x - \text{floor}` onto the
    simplex of mass :math:`s = 1 - k\,\text{floor}`: sort :math:`u` descending, take the
    largest :math:`\rho` with :math:`u_\rho > (\sum_{j \le \rho} u_j - s)/\rho`, set
    :math:`\theta = (\sum_{j \le \rho} u_j - s)/\rho` and :math:`y = \max(u - \theta, 0)`
    (Held, Wolfe & Crowder 1974; Duchi, Shalev-Shwartz, Singer & Chandra, ICML 2008).
    """
    k = x.shape[-1]
    mass = 1.0 - k * floor
    if mass <= 0:
        raise ValueError(f"floor {floor} is too large for {k} coordinates")
    # The projection does not change when a constant is added to every coordinate: shift the largest to 0, so
    # that a huge step (a gradient 1/p with p at the floor) does not swamp the float32 arithmetic below.
    y = x - x.amax(dim=-1, keepdim=True)
    u, _ = torch.sort(y, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - mass
    ind = torch.arange(1, k + 1, device=x.device, dtype=x.dtype)
    rho = (u - css / ind > 0).sum(dim=-1, keepdim=True).clamp_min(1)  # how many stay positive (>= 1)
    theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
    return floor + torch.clamp(y - theta, min=0.0)


def _renormalise(p: torch.Tensor, floor: float) -> torch.Tensor:
    if p.shape[-1] * floor > 1:  # no point of the simplex has every coordinate at the floor or above
        raise ValueError(f"floor {floor} is too large for {p.shape[-1]} coordinates")
    p = p.clamp_min(floor)
    p = p / p.sum(dim=-1, keepdim=True)
    # Dividing by the sum takes a clamped coordinate below the floor by a factor 1 / (1 + k floor) at most: a hair
    # for the default floor, but far below a large one (0.4 of 2 outcomes could become 0.31); there, project.
    if bool((p < floor * (1 - 1e-6)).any()):
        p = project_onto_simplex(p, floor)
    return p


class ProbabilitySimplex(geoopt.Manifold):
    """The open probability simplex with the Fisher-Rao metric (module docstring).

    ``retr`` is the exponentiated retraction; :class:`ProbabilitySimplexExact` uses
    the exact exponential map instead (as geoopt's ``SphereExact`` does for the sphere).
    """

    name = "ProbabilitySimplex"
    ndim = 1
    reversible = False

    def __init__(self, floor: float = FLOOR):
        super().__init__()
        if not 0.0 < floor < 0.5:
            raise ValueError(f"floor must be in (0, 0.5), got {floor}")
        self.floor = floor

    # ------------------------------------------------------------------ checks
    def _check_shape(self, shape, name):
        ok, reason = super()._check_shape(shape, name)
        if ok and shape[-1] < 2:
            return False, f"'{name}' needs at least 2 outcomes on its last axis, got {shape[-1]}"
        return ok, reason

    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        if not bool((x > 0).all()):
            return False, "some p_i <= 0: the point is not in the open simplex"
        total = x.sum(dim=-1)
        if not torch.allclose(total, torch.ones_like(total), atol=atol, rtol=rtol):
            return False, f"sum(p) != 1 with atol={atol}, rtol={rtol}"
        return True, None

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        total = u.sum(dim=-1)
        if not torch.allclose(total, torch.zeros_like(total), atol=atol, rtol=rtol):
            return False, f"sum(u) != 0 with atol={atol}, rtol={rtol}"
        return True, None

    # ------------------------------------------------------------------ metric
    def inner(self, x, u, v=None, *, keepdim=False):
        """:math:`\\langle u, v\\rangle_p = \\sum_i u_i v_i / p_i`."""
        if v is None:
            v = u
        inner = (u * v / x).sum(dim=-1, keepdim=keepdim)
        return inner.expand(torch.broadcast_shapes(x.shape[:-1] + (1,) * keepdim, inner.shape))

    def proju(self, x, u):
        """:math:`P_p(u) = u - (\\sum_i u_i)\\, p`, orthogonal for the Fisher-Rao metric."""
        return u - u.sum(dim=-1, keepdim=True) * x

    def egrad2rgrad(self, x, u):
        """:math:`p \\odot (g - \\langle p, g\\rangle)`: the natural gradient."""
        return x * (u - (x * u).sum(dim=-1, keepdim=True))

    def projx(self, x):
        """Euclidean projection onto the simplex with every coordinate at least ``floor``."""
        return project_onto_simplex(x, self.floor)

    # ------------------------------------------------------------------ moving
    def retr(self, x, u):
        """:math:`R_p(u) = p \\odot e^{u/p} / \\sum_j p_j e^{u_j/p_j}` (a softmax of :math:`\\log p + u/p`)."""
        return _renormalise(torch.softmax(torch.log(x) + u / x, dim=-1), self.floor)

    def expmap(self, x, u):
        """The Fisher-Rao geodesic from ``x`` with velocity ``u`` at time 1, through :math:`z = 2\\sqrt{p}`;
        reflected at a face it reaches (module docstring)."""
        z = 2.0 * torch.sqrt(x)
        w = u / torch.sqrt(x)  # the velocity on the sphere; ||w|| = ||u||_p
        half = 0.5 * w.norm(dim=-1, keepdim=True)  # half the arc length: the angle swept on the radius-2 sphere
        # 2 sin(|w|/2) / |w| = sinc(|w| / (2 pi)) with torch's normalised sinc: smooth at u = 0
        z_new = torch.cos(half) * z + torch.sinc(half / torch.pi) * w
        return _renormalise(z_new**2 / 4.0, self.floor)

    def face_time(self, x, u):
        r"""The first time :math:`t \ge 0` at which the geodesic :math:`\operatorname{Exp}_p(tu)` reaches a face
        (some :math:`p_i = 0`); ``inf`` for ``u = 0``. With :math:`h = \lVert u\rVert_p / 2`, coordinate ``i`` of
        :math:`z(t)` is :math:`z_i \cos(th) + (2 w_i/\lVert w\rVert) \sin(th)`, first zero at
        :math:`th = \operatorname{atan2}(2 w_i/\lVert w\rVert, z_i) + \pi/2`. Beyond it :meth:`expmap` reflects."""
        z = 2.0 * torch.sqrt(x)
        w = u / torch.sqrt(x)
        norm = w.norm(dim=-1, keepdim=True)
        half = 0.5 * norm
        phase = torch.atan2(2.0 * w / norm.clamp_min(torch.finfo(x.dtype).tiny), z) + torch.pi / 2
        t = (phase / half).amin(dim=-1)
        return torch.where(half[..., 0] > 0, t, torch.full_like(t, torch.inf))

    def logmap(self, x, y):
        """The tangent vector at ``x`` whose geodesic reaches ``y`` at time 1 (inverse of :meth:`expmap`)."""
        zx, zy = 2.0 * torch.sqrt(x), 2.0 * torch.sqrt(y)
        cos = (torch.sqrt(x * y)).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
        theta = torch.acos(cos)  # angle between zx and zy; the arc on the radius-2 sphere is 2 theta
        d = zy - cos * zx  # length 2 sin(theta), tangent at zx
        w = d / torch.sinc(theta / torch.pi)  # length 2 theta
        return self.proju(x, torch.sqrt(x) * w)

    def dist(self, x, y, *, keepdim=False):
        """:math:`2 \\arccos \\sum_i \\sqrt{p_i q_i} = 4 \\arcsin(\\lVert \\sqrt p - \\sqrt q\\rVert / 2)`."""
        chord = (torch.sqrt(x) - torch.sqrt(y)).norm(dim=-1, keepdim=keepdim)
        return 4.0 * torch.asin((chord / 2.0).clamp(max=1.0))

    def transp(self, x, y, v):
        """Vector transport by the differentiated retraction, :math:`P_q(q \\odot v / p)` from ``x`` = p
        to ``y`` = q: the same step in :math:`\\log p` (module docstring)."""
        return self.proju(y, v * y / x)

    # ------------------------------------------------------------------ points
    def random(self, *size, dtype=None, device=None, seed=None):
        """Points drawn uniformly from the simplex (normalised Exp(1) draws: a flat Dirichlet)."""
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], tuple | list) else tuple(size)
        self._assert_check_shape(shape, "x")
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        e = -torch.log1p(-torch.rand(*shape, generator=gen, dtype=torch.float64))  # Exp(1)
        p = _renormalise(e / e.sum(dim=-1, keepdim=True), self.floor)
        return geoopt.ManifoldTensor(p.to(dtype=dtype or torch.get_default_dtype(), device=device), manifold=self)

    def origin(self, *size, dtype=None, device=None, seed=42):
        """The uniform distribution."""
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], tuple | list) else tuple(size)
        self._assert_check_shape(shape, "x")
        p = torch.full(shape, 1.0 / shape[-1], dtype=dtype, device=device)
        return geoopt.ManifoldTensor(p, manifold=self)

    def extra_repr(self):
        return f"floor={self.floor:g}"


class ProbabilitySimplexExact(ProbabilitySimplex):
    """:class:`ProbabilitySimplex` whose optimizer step is the exact exponential map."""

    name = "ProbabilitySimplex(exact)"

    def retr(self, x, u):
        return self.expmap(x, u)

    def transp(self, x, y, v):
        """Vector transport: :math:`P_q(v)`, the identity on tangent vectors (module docstring)."""
        return self.proju(y, v)
