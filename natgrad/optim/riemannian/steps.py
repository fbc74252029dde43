r"""Where one step lands: the Euclidean step, retractions and the exponential map, side by side.

The retraction lab draws these. Every landing point is computed by a manifold's own
method: geoopt's ``Sphere.retr`` (:math:`(x+v)/\lVert x+v\rVert`), ``SphereExact.expmap``,
``EuclideanStiefel.retr`` (QR) and ``CanonicalStiefel.retr`` (Cayley, Wen & Yin 2013)
on the Stiefel manifold :math:`\operatorname{St}(3, 1)`, which is the 2-sphere; on the
simplex :class:`~natgrad.optim.riemannian.simplex.ProbabilitySimplex`'s ``retr``,
``expmap`` and ``projx``. Distances are the manifolds' geodesic distances.

For a tangent vector of length :math:`s` on the unit sphere the exponential map
travels an arc :math:`s`, the projection (and QR, which for one column is the same
normalisation) :math:`\arctan s`, the Cayley retraction :math:`2\arctan(s/2)`
(Absil, Mahony & Sepulchre 2008, sec. 4.1): all agree to first order and part later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import geoopt
import numpy as np
import torch

from natgrad.optim.riemannian.simplex import ProbabilitySimplex

__all__ = ["SIMPLEX_METHODS", "SPHERE_METHODS", "SimplexSteps", "SphereSteps", "simplex_steps", "sphere_point",
           "simplex_direction", "sphere_steps", "tangent_direction"]

SPHERE_METHODS = ("exponential map", "projection (x+v)/|x+v|", "QR (Stiefel, k = 1)", "Cayley (Stiefel, k = 1)")
SIMPLEX_METHODS = ("exponential map (Fisher-Rao)", "retraction p·exp(u/p)/Z", "Euclidean projection of p + u")


def sphere_point(lat_deg: float, lon_deg: float) -> np.ndarray:
    """The unit vector at latitude/longitude (degrees)."""
    la, lo = math.radians(lat_deg), math.radians(lon_deg)
    return np.array([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])


def tangent_direction(lat_deg: float, lon_deg: float, heading_deg: float) -> np.ndarray:
    """Unit tangent vector at the point, ``heading_deg`` counter-clockwise from east (0: east, 90: north)."""
    la, lo, h = math.radians(lat_deg), math.radians(lon_deg), math.radians(heading_deg)
    east = np.array([-math.sin(lo), math.cos(lo), 0.0])
    north = np.array([-math.sin(la) * math.cos(lo), -math.sin(la) * math.sin(lo), math.cos(la)])
    return math.cos(h) * east + math.sin(h) * north


@dataclass(frozen=True)
class SphereSteps:
    point: np.ndarray  # (3,) x on the unit sphere
    step: np.ndarray  # (3,) the Euclidean step d (may point off the tangent plane)
    euclidean: np.ndarray  # (3,) x + d, off the sphere
    tangent: np.ndarray  # (3,) v = P_x(d) = d - (x.d) x
    landings: dict[str, np.ndarray]  # method -> (3,) R_x(v)
    geodesic: np.ndarray  # (m, 3) Exp_x(s v), s in [0, 1]
    scales: np.ndarray  # (n,) lengths s of the tangent vector s v/|v|
    travelled: dict[str, np.ndarray]  # method -> (n,) geodesic distance from x to R_x(s v/|v|)
    apart: dict[str, np.ndarray]  # retraction -> (n,) geodesic distance between R_x(s v/|v|) and Exp_x(s v/|v|)


def _sphere_methods() -> dict:
    sphere, exact = geoopt.Sphere(), geoopt.SphereExact()
    qr, cayley = geoopt.EuclideanStiefel(), geoopt.CanonicalStiefel()
    return {SPHERE_METHODS[0]: exact.expmap, SPHERE_METHODS[1]: sphere.retr,
            SPHERE_METHODS[2]: lambda x, v: qr.retr(x[..., None], v[..., None])[..., 0],
            SPHERE_METHODS[3]: lambda x, v: cayley.retr(x[..., None], v[..., None])[..., 0]}


def great_circle_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The angle between unit vectors (last axis), :math:`2\operatorname{atan2}(|x - y|, |x + y|)`: accurate at every
    angle. (geoopt's ``Sphere.dist``, an arccos of a clamped inner product, is never below about 4.5e-4 in float64:
    the distances of short steps came out wrong, the gap between a retraction and the geodesic by 10x at 0.05.)"""
    return 2 * torch.atan2(torch.linalg.norm(x - y, dim=-1), torch.linalg.norm(x + y, dim=-1))


def sphere_steps(lat_deg: float, lon_deg: float, heading_deg: float, tilt_deg: float, length: float,
                 max_length: float = 3.0, points: int = 61) -> SphereSteps:
    """The step ``d`` of Euclidean length ``length`` from the point, ``tilt_deg`` out of the tangent plane
    (towards the outside), and where each method sends its tangent projection; distances for tangent
    lengths ``0..max_length``. float64."""
    x = sphere_point(lat_deg, lon_deg)
    t = math.radians(tilt_deg)
    d = length * (math.cos(t) * tangent_direction(lat_deg, lon_deg, heading_deg) + math.sin(t) * x)
    sphere = geoopt.Sphere()
    xt = torch.tensor(x)
    v = sphere.proju(xt, torch.tensor(d))
    methods = _sphere_methods()
    landings = {name: f(xt, v).numpy() for name, f in methods.items()}
    s = torch.linspace(0.0, 1.0, 41, dtype=torch.float64)[:, None]
    geodesic = methods[SPHERE_METHODS[0]](xt.expand(len(s), 3), s * v).numpy()
    scales = torch.linspace(0.0, max_length, points, dtype=torch.float64)[:, None]
    unit = torch.tensor(tangent_direction(lat_deg, lon_deg, heading_deg))
    xs, vs = xt.expand(points, 3), scales * unit
    reached = {name: f(xs, vs) for name, f in methods.items()}
    exp = reached[SPHERE_METHODS[0]]
    return SphereSteps(point=x, step=d, euclidean=x + d, tangent=v.numpy(), landings=landings, geodesic=geodesic,
                       scales=scales[:, 0].numpy(),
                       travelled={name: great_circle_distance(xs, y).numpy() for name, y in reached.items()},
                       apart={name: great_circle_distance(y, exp).numpy() for name, y in reached.items()
                              if name != SPHERE_METHODS[0]})


# ------------------------------------------------------------------------------------------ simplex
@dataclass(frozen=True)
class SimplexSteps:
    point: np.ndarray  # (3,) p in the open simplex
    tangent: np.ndarray  # (3,) u, sum 0
    fisher_length: float  # ||u||_p
    euclidean: np.ndarray  # (3,) p + u, may have negative coordinates
    landings: dict[str, np.ndarray]  # method -> (3,)
    geodesic: np.ndarray  # (m, 3) Exp_p(s u), s in [0, 1]
    face_time: float  # first s at which the geodesic reaches a face (inf: never on its great circle)
    scales: np.ndarray  # (n,) Euclidean lengths of u
    apart: dict[str, np.ndarray]  # method -> (n,) Fisher-Rao distance to Exp_p(s u/|u|)


def simplex_direction(angle_deg: float) -> np.ndarray:
    """Unit (Euclidean) vector in the plane sum(u) = 0, ``angle_deg`` counter-clockwise in the drawn triangle
    (vertex 1 at the left, 2 at the right, 3 on top): 0 moves right (mass from outcome 1 to outcome 2),
    90 moves up (mass from outcomes 1 and 2 to outcome 3)."""
    a = math.radians(angle_deg)
    right = np.array([-1.0, 1.0, 0.0]) / math.sqrt(2.0)
    up = np.array([-1.0, -1.0, 2.0]) / math.sqrt(6.0)
    return math.cos(a) * right + math.sin(a) * up


def simplex_steps(p: tuple[float, float, float], angle_deg: float, length: float, max_length: float = 1.0,
                  points: int = 61) -> SimplexSteps:
    """A tangent vector of Euclidean length ``length`` at ``p`` (three probabilities, summing to 1) and where the
    exponential map, the retraction and the Euclidean projection of ``p + u`` land; distances for lengths
    ``0..max_length``. float64."""
    simplex = ProbabilitySimplex()
    pt = torch.tensor(p, dtype=torch.float64)
    if pt.shape != (3,) or not bool((pt > 0).all()) or abs(float(pt.sum()) - 1.0) > 1e-9:
        raise ValueError(f"need three positive probabilities summing to 1, got {p}")
    unit = torch.tensor(simplex_direction(angle_deg))
    u = length * unit
    methods = {SIMPLEX_METHODS[0]: simplex.expmap, SIMPLEX_METHODS[1]: simplex.retr,
               SIMPLEX_METHODS[2]: lambda x, v: simplex.projx(x + v)}
    s = torch.linspace(0.0, 1.0, 81, dtype=torch.float64)[:, None]
    scales = torch.linspace(0.0, max_length, points, dtype=torch.float64)[:, None]
    ps, us = pt.expand(points, 3), scales * unit
    exp = simplex.expmap(ps, us)
    return SimplexSteps(point=pt.numpy(), tangent=u.numpy(), fisher_length=float(simplex.norm(pt, u)),
                        euclidean=(pt + u).numpy(), landings={n: f(pt, u).numpy() for n, f in methods.items()},
                        geodesic=simplex.expmap(pt.expand(len(s), 3), s * u).numpy(),
                        face_time=float(simplex.face_time(pt, u)), scales=scales[:, 0].numpy(),
                        apart={n: simplex.dist(f(ps, us), exp).numpy() for n, f in methods.items()
                               if n != SIMPLEX_METHODS[0]})
