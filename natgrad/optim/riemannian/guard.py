"""Refuse, or warn about, Euclidean optimizers handed parameters that live on a manifold.

A ``geoopt.ManifoldParameter`` carries its manifold (Stiefel, Poincare ball, simplex,
...). A Euclidean optimizer (Adam, SGD, Shampoo, K-FAC) adds a step in the ambient
coordinates: it ignores the manifold's metric and walks off the manifold
(:math:`Q^\\top Q \\ne I`, a norm at or beyond 1 in the Poincare ball, a negative
probability). :func:`natgrad.experiments.make_stepper` calls :func:`check_euclidean`
for every optimizer that is not manifold-aware.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import geoopt
import torch

__all__ = ["ManifoldParameterWarning", "check_euclidean", "manifold_parameters", "warn_euclidean"]

MODES = ("refuse", "warn")


class ManifoldParameterWarning(UserWarning):
    """A Euclidean optimizer was deliberately run on a manifold parameter."""


def manifold_parameters(params: Iterable[torch.Tensor]) -> list[geoopt.ManifoldParameter]:
    """The parameters among ``params`` that carry a manifold (``geoopt.ManifoldParameter``/``ManifoldTensor``)."""
    return [p for p in params if isinstance(p, geoopt.ManifoldParameter | geoopt.ManifoldTensor)]


def _why(found: list, optimizer: str) -> str:
    where = ", ".join(sorted({f"{p.manifold.name} {tuple(p.shape)}" for p in found}))
    return (f"{optimizer} is a Euclidean optimizer, but these parameters live on a manifold: {where}. Its step "
            "ignores the manifold's metric and leaves the manifold (Q^T Q != I on Stiefel, a norm >= 1 in the "
            "Poincare ball, a negative probability on the simplex). Use riemannian-sgd or riemannian-adam "
            "(natgrad.optim.riemannian.RiemannianSGD / RiemannianAdam), or projected-sgd / projected-adam "
            "(ProjectedSGD / ProjectedAdam) to put the parameters back after every step")


def check_euclidean(params: Iterable[torch.Tensor], optimizer: str, on_manifold: str = "refuse") -> None:
    """Raise ``ValueError`` (``on_manifold="refuse"``) or warn (``"warn"``, for runs that show the failure on
    purpose) when ``params`` holds manifold parameters, saying why; do nothing otherwise."""
    if on_manifold not in MODES:
        raise ValueError(f"on_manifold must be one of {MODES}, got {on_manifold!r}")
    found = manifold_parameters(params)
    if not found:
        return
    if on_manifold == "refuse":
        raise ValueError(_why(found, optimizer) + "; pass on_manifold='warn' to run it anyway on purpose.")
    warnings.warn(_why(found, optimizer) + ". Running anyway, as asked (on_manifold='warn').",
                  ManifoldParameterWarning, stacklevel=2)


def warn_euclidean(params: Iterable[torch.Tensor], optimizer: str, stacklevel: int = 2) -> None:
    """Warn (:class:`ManifoldParameterWarning`) when ``params`` holds manifold parameters other than
    Euclidean ones: what natgrad's Euclidean optimizers (Shampoo, SOAP, Sophia, K-FAC, MuonAdam) do when
    constructed on them directly; they still run, as asked."""
    found = [p for p in manifold_parameters(params) if not isinstance(p.manifold, geoopt.Euclidean)]
    if found:
        warnings.warn(_why(found, optimizer) + ".", ManifoldParameterWarning, stacklevel=stacklevel + 1)
