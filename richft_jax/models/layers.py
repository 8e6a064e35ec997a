"""Stochastic layers the backbones and the classifier share: inverted feature dropout, drop path
(stochastic depth) and its per-block rates.

They live with the models (not with the training methods) so `richft_jax.models` imports
nothing from `richft_jax.methods`. Every rate may be a traced scalar, so a schedule
(methods/feature_dropout.py) can change it every step without recompiling the train step.
"""

import jax
import jax.numpy as jnp


def feature_dropout(features: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Very large dropout on the penultimate features (Zhang & Bottou, arXiv 2403.00946).

    Zeroes each feature with probability `rate` and rescales the kept ones by 1/(1-rate)
    (inverted), so the head sees the same expected activation at train and eval time.
    """
    rate = jnp.asarray(rate, features.dtype)
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, features.shape)
    # rate == 1 keeps nothing; guard the division so the output is 0, not NaN.
    scale = jnp.where(keep_prob > 0, 1.0 / jnp.maximum(keep_prob, 1e-12), 0.0)
    return jnp.where(keep, features * scale, jnp.zeros_like(features))


def drop_path(branch: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016): zeroes the residual `branch` [N, ...] of each
    example with probability `rate` and rescales the kept ones by 1/(1-rate) (inverted)."""
    rate = jnp.asarray(rate, branch.dtype)
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, (branch.shape[0],) + (1,) * (branch.ndim - 1))
    scale = jnp.where(keep_prob > 0, 1.0 / jnp.maximum(keep_prob, 1e-12), 0.0)
    return jnp.where(keep, branch * scale, jnp.zeros_like(branch))


def depth_rates(rate: jax.Array | float, depth: int) -> list[jax.Array]:
    """Per-block drop-path rates rising linearly with depth: 0 for the first block, `rate` for
    the last (the stochastic-depth rule of DeiT/ConvNeXt, used by Liu et al. 2023)."""
    if depth < 1:
        raise ValueError(f"depth_rates: depth={depth} must be at least 1.")
    rate = jnp.asarray(rate, jnp.float32)
    if depth == 1:
        return [rate]
    return [rate * (i / (depth - 1)) for i in range(depth)]
