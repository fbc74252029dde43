"""Small models and data sets the labs train.

``natgrad.tasks.digits``: scikit-learn's bundled 8x8 digits (1797 images,
offline), a deep autoencoder in the style of Martens & Grosse (2015) and a
small classifier. ``natgrad.tasks.quadratic``: a quadratic with a
Kronecker-structured Hessian whose skew (condition numbers) is a parameter,
for comparing Shampoo's exponents. ``natgrad.tasks.manifolds`` and
``natgrad.tasks.poincare``: toy problems on manifolds (top eigenvectors on the
Stiefel manifold, a categorical fit on the simplex, a tree in the Poincare disk).
"""

from natgrad.tasks.digits import (
    autoencoder_loss,
    digits_autoencoder,
    digits_classifier,
    load_digits_tensors,
)
from natgrad.tasks.quadratic import KroneckerQuadratic, kron_quadratic

__all__ = ["KroneckerQuadratic", "autoencoder_loss", "digits_autoencoder", "digits_classifier", "kron_quadratic",
           "load_digits_tensors"]
