"""Riemannian optimization on geoopt (Kochurov, Karimov & Kozlukov 2020, arXiv 2005.02819).

geoopt supplies the manifolds (``Sphere``, ``EuclideanStiefel`` with the QR retraction,
``CanonicalStiefel`` with the Cayley retraction, ``PoincareBall``) and the optimizers
``RiemannianSGD`` (Bonnabel 2013, arXiv 1111.5280) and ``RiemannianAdam`` (Becigneul &
Ganea 2019, arXiv 1810.00760); this package adds what geoopt lacks:

* :mod:`~natgrad.optim.riemannian.rsgd` - ``RiemannianSGD``: geoopt's, with a momentum buffer that
  starts from the Riemannian gradient (geoopt's starts from the Euclidean one);

* :mod:`~natgrad.optim.riemannian.simplex` - ``ProbabilitySimplex``: the open simplex with
  the Fisher-Rao metric as a ``geoopt.Manifold`` (natural gradient, exponentiated
  retraction, exact exponential map through the sphere), so geoopt's optimizers run on it;
* :mod:`~natgrad.optim.riemannian.projected` - ``ProjectedAdam`` / ``ProjectedSGD``: the
  Euclidean step, then the manifold's projection (the "re-orthonormalise" baseline);
* :mod:`~natgrad.optim.riemannian.guard` - ``check_euclidean``: a Euclidean optimizer handed a
  ``geoopt.ManifoldParameter`` is refused, or warned about, with the reason;
* :mod:`~natgrad.optim.riemannian.steps` - where the Euclidean step, retractions and the
  exponential map land, for the retraction lab.
"""

from geoopt import ManifoldParameter
from geoopt.optim import RiemannianAdam

from natgrad.optim.riemannian.guard import ManifoldParameterWarning, check_euclidean, manifold_parameters
from natgrad.optim.riemannian.projected import ProjectedAdam, ProjectedSGD
from natgrad.optim.riemannian.rsgd import RiemannianSGD
from natgrad.optim.riemannian.simplex import ProbabilitySimplex, ProbabilitySimplexExact, project_onto_simplex
from natgrad.optim.riemannian.steps import (
    SIMPLEX_METHODS,
    SPHERE_METHODS,
    SimplexSteps,
    SphereSteps,
    simplex_direction,
    simplex_steps,
    sphere_point,
    sphere_steps,
    tangent_direction,
)

__all__ = [
    "SIMPLEX_METHODS",
    "SPHERE_METHODS",
    "ManifoldParameter",
    "ManifoldParameterWarning",
    "ProbabilitySimplex",
    "ProbabilitySimplexExact",
    "ProjectedAdam",
    "ProjectedSGD",
    "RiemannianAdam",
    "RiemannianSGD",
    "SimplexSteps",
    "SphereSteps",
    "check_euclidean",
    "manifold_parameters",
    "project_onto_simplex",
    "simplex_direction",
    "simplex_steps",
    "sphere_point",
    "sphere_steps",
    "tangent_direction",
]
