"""natgrad: natural-gradient optimizers and the curvature tools to study them.

Pure PyTorch; never imports streamlit. See ``natgrad.devices`` for device
selection.
"""

__version__ = "0.1.0"
