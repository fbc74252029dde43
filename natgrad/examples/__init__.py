"""Runnable examples (``python -m natgrad.examples.<name>``)."""
