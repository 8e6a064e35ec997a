"""Noise stability of a trained network (the robustness measure of Li & Zhang 2021).

How much the output moves when the input or the weights are perturbed by Gaussian noise:
mean over examples and draws of |f(x + e) - f(x)| / |f(x)| on the logits. Input noise has
standard deviation sigma (on normalised images); weight noise is relative, sigma |W| / sqrt(size)
per tensor, so every layer is perturbed in proportion to its own scale.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _relative_change(clean: jax.Array, noisy: jax.Array) -> jax.Array:
    num = jnp.linalg.norm(noisy - clean, axis=-1)
    return jnp.mean(num / jnp.maximum(jnp.linalg.norm(clean, axis=-1), 1e-12))


def perturb_weights(params: Any, sigma: float, key: jax.Array) -> Any:
    """`params` + relative Gaussian noise: N(0, (sigma |W| / sqrt(W.size))^2) per tensor."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        w + sigma * jnp.linalg.norm(w) / jnp.sqrt(w.size) * jax.random.normal(k, w.shape, w.dtype)
        for w, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


def noise_stability(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    variables: dict,
    images: jax.Array,
    sigma: float,
    key: jax.Array,
    target: str,
    draws: int = 4,
) -> float:
    """Mean relative change of the logits under `draws` Gaussian perturbations of the
    "input" (images, std sigma) or the "weights" (params, relative std sigma)."""
    if target not in ("input", "weights"):
        raise ValueError(f"noise_stability: target={target!r} is not 'input' or 'weights'.")
    clean = logits_fn(variables, images)
    changes = []
    for k in jax.random.split(key, draws):
        if target == "input":
            noisy = logits_fn(variables, images + sigma * jax.random.normal(k, images.shape))
        else:
            perturbed = {**variables, "params": perturb_weights(variables["params"], sigma, k)}
            noisy = logits_fn(perturbed, images)
        changes.append(_relative_change(clean, noisy))
    return float(jnp.mean(jnp.stack(changes)))
