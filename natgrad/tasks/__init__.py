"""Small models and data sets the labs train.

``natgrad.tasks.digits``: scikit-learn's bundled 8x8 digits (1797 images,
offline), a deep autoencoder in the style of Martens & Grosse (2015) and a
small classifier.
"""

from natgrad.tasks.digits import (
    autoencoder_loss,
    digits_autoencoder,
    digits_classifier,
    load_digits_tensors,
)

__all__ = ["autoencoder_loss", "digits_autoencoder", "digits_classifier", "load_digits_tensors"]
