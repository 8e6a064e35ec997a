"""Very large dropout on the penultimate features (Zhang & Bottou, arXiv 2403.00946).

Inverted dropout: kept features are scaled by 1/(1-rate) so the head sees the same
expected activation at train and eval time. The rate may be a traced scalar, so a
schedule can change it every step without recompiling the train step.
"""

from collections.abc import Callable

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


SCHEDULES = ("constant", "early", "early_linear", "late")


def rate_schedule(kind: str, rate: float, cutoff: int) -> Callable[[int], float]:
    """Dropout rate per step (Liu et al. 2023, "Dropout reduces underfitting").

    constant: `rate` throughout; early: `rate` before step `cutoff`, then 0; early_linear: from
    `rate` down linearly to 0 at `cutoff`, then 0; late: 0 before `cutoff`, then `rate`. The rate
    is passed to the jitted step as an argument, so changing it never recompiles.
    """
    if kind == "constant":
        return lambda step: rate
    if kind == "early":
        return lambda step: rate if step < cutoff else 0.0
    if kind == "early_linear":
        return lambda step: rate * max(0.0, 1.0 - step / cutoff) if cutoff > 0 else 0.0
    if kind == "late":
        return lambda step: 0.0 if step < cutoff else rate
    raise ValueError(f"config.dropout_schedule={kind!r} is not one of {SCHEDULES}.")


def step_rates(
    kind: str, cutoff: int, rates: dict[str, float]
) -> Callable[[int], dict[str, float]]:
    """Every configured rate of a step under one schedule: `{"feature": p, name: p', ...}`.

    "feature" (the penultimate dropout) is always present; other entries (e.g. the ViT's
    `block_dropout_rate`, `drop_path_rate`) only when their configured rate is non-zero, so a
    backbone without them never receives them and the dict's structure (hence the compiled
    step) is the same at every step.
    """
    schedules = {
        name: rate_schedule(kind, rate, cutoff)
        for name, rate in rates.items()
        if name == "feature" or rate > 0
    }
    return lambda step: {name: float(s(step)) for name, s in schedules.items()}
