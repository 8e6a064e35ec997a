"""Backbones, the classifier (backbone -> feature dropout -> linear head) and weight loading.

`model, variables = richft_jax.models.from_pretrained(name, path)` builds a published
checkpoint's own model (models/pretrained.py).
"""

from richft_jax.models.pretrained import from_pretrained

__all__ = ["from_pretrained"]
