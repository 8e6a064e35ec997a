"""Stochastic depth (drop path) and per-block rates (Huang et al. 2016; Liu et al. 2023).

Drop path zeroes a residual branch for a whole example with probability `rate` and rescales
the kept branches by 1/(1-rate) (inverted, as feature dropout). The rate may be a traced
scalar, so early/late schedules change it every step without recompiling. Any backbone with
residual branches (the demo ViT here, ViT-B/16 in models/vit.py) can call it.
"""

import jax
import jax.numpy as jnp


def drop_path(branch: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Zeroes the residual `branch` [N, ...] of each example with probability `rate`."""
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
