"""Backbones, the classifier (backbone -> feature dropout -> linear head) and weight loading.

`model, variables = richft_jax.models.from_pretrained(name, path)` builds a published
checkpoint's own model (models/pretrained.py). Imported on first use, not with the package, so
that `richft_jax.models.hub` (the weights registry, no JAX) loads without JAX: the preflight
reads it before JAX is imported.
"""

__all__ = ["from_pretrained"]


def __getattr__(name: str):
    if name == "from_pretrained":
        from richft_jax.models.pretrained import from_pretrained  # noqa: PLC0415

        return from_pretrained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
