"""Uniform running average of the weights along a run (DomainBed's "MA" / SWAD-style baseline).

The paper compares very-large dropout with weight averaging along one run: the uniform
average of the parameters of every step from `start` on. It lives in the train state, is
updated inside the jitted step and is evaluated like the model.
"""

from typing import Any

import jax
import jax.numpy as jnp


def update(average: Any, params: Any, step: jax.Array, start: int) -> Any:
    """The average after the step that produced `params` (`step` counts steps done, from 1).

    Before `start` the average just follows the parameters; from `start` on it is the uniform
    mean of the parameters of steps start, start+1, ..., step.
    """
    n = (step - start + 1).astype(jnp.float32)
    return jax.tree.map(
        lambda a, p: jnp.where(n >= 1, a + (p - a) / jnp.maximum(n, 1.0), p), average, params
    )
