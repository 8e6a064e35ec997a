"""The linear regime of fine-tuning: a network against its first-order Taylor model.

f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0), computed with one `jax.jvp` (the Jacobian is never
materialised), for any output pytree of the network (logits, penultimate features). Zhang &
Bottou argue that fine-tuning a large pretrained network on little data stays close to it.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def taylor_model(fn: Callable[..., PyTree], params0: PyTree, params: PyTree, *args: Any) -> PyTree:
    """fn(params0, *args) + J_params fn(params0, *args) · (params − params0), by jax.jvp."""
    delta = jax.tree.map(lambda p, p0: p - p0, params, params0)
    out0, tangent = jax.jvp(lambda p: fn(p, *args), (params0,), (delta,))
    return jax.tree.map(jnp.add, out0, tangent)


def compare(network_logits: jax.Array, taylor_logits: jax.Array, labels: jax.Array) -> dict:
    """Prediction agreement, both accuracies and the relative logit distance on one batch."""
    a, b = jnp.argmax(network_logits, -1), jnp.argmax(taylor_logits, -1)
    return {
        "agreement": jnp.mean(a == b),
        "network_accuracy": jnp.mean(a == labels),
        "taylor_accuracy": jnp.mean(b == labels),
        "relative_distance": jnp.linalg.norm(network_logits - taylor_logits)
        / jnp.maximum(jnp.linalg.norm(network_logits), 1e-12),
    }


def classifier_outputs(model, params0: PyTree, params: PyTree, batch_stats: PyTree, images):
    """(network, Taylor model) outputs of a codebase classifier in eval mode, each a pair
    (logits, {"features": penultimate features}); BatchNorm statistics are held fixed."""

    def fn(p, x):
        return model.apply({"params": p, "batch_stats": batch_stats}, x, train=False)

    return fn(params, images), taylor_model(fn, params0, params, images)
