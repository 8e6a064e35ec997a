"""What the backbone sees: uint8 pixels as float32 in the config's normalisation.

Pure JAX and free of TensorFlow, so the jitted steps (steps.py) and everything that only builds
a model and a step (the benchmarks, a GPU image without TensorFlow) import none of tf.data.
"""

import jax
import jax.numpy as jnp

KINDS = ("minus_one_one", "imagenet")


def normalize(images: jax.Array, kind: str) -> jax.Array:
    """uint8 images to float32 as the backbone expects; runs inside the jitted steps."""
    x = images.astype(jnp.float32) / 255.0
    if kind == "minus_one_one":
        return x * 2.0 - 1.0
    if kind == "imagenet":
        mean = jnp.array([0.485, 0.456, 0.406], jnp.float32)
        std = jnp.array([0.229, 0.224, 0.225], jnp.float32)
        return (x - mean) / std
    raise ValueError(f"config.data.normalize: unknown normalisation {kind!r}; one of {KINDS}.")
