"""Very large dropout on the penultimate features (Zhang & Bottou, arXiv 2403.00946).

Inverted dropout: kept features are scaled by 1/(1-rate) so the head sees the same
expected activation at train and eval time. The rate may be a traced scalar, so a
schedule can change it every step without recompiling the train step.
"""

import jax
import jax.numpy as jnp


def feature_dropout(features: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Zeroes each feature with probability `rate` and rescales the kept ones by 1/(1-rate)."""
    rate = jnp.asarray(rate, features.dtype)
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, features.shape)
    # rate == 1 keeps nothing; guard the division so the output is 0, not NaN.
    scale = jnp.where(keep_prob > 0, 1.0 / jnp.maximum(keep_prob, 1e-12), 0.0)
    return jnp.where(keep, features * scale, jnp.zeros_like(features))
