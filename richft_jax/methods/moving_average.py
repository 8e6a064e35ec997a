"""Uniform running average of the weights along a run (DomainBed's "MA" / SWAD-style baseline).

The paper compares very-large dropout with weight averaging along one run: the uniform
average of the parameters of every step from `start` on. It lives in the train state, is
updated inside the jitted step and is evaluated like the model.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from richft_jax import results
from richft_jax.methods import weight_space
from richft_jax.methods.method import Method


def update(average: Any, params: Any, step: jax.Array, start: int) -> Any:
    """The average after the step that produced `params` (`step` counts steps done, from 1).

    Before `start` the average just follows the parameters; from `start` on it is the uniform
    mean of the parameters of steps start, start+1, ..., step.
    """
    n = (step - start + 1).astype(jnp.float32)
    return jax.tree.map(
        lambda a, p: jnp.where(n >= 1, a + (p - a) / jnp.maximum(n, 1.0), p), average, params
    )


def method(config: ml_collections.ConfigDict) -> Method | None:
    """The running average from `config.moving_average_start` on, evaluated beside the model."""
    start = config.moving_average_start
    if start is None:
        return None

    def init_extras(params: Any) -> Any:
        # A copy, not an alias: the state is donated to the step, and a buffer donated twice
        # (as params and as the average) crashes XLA.
        return weight_space.copy_tree(params)

    def post_update(params: Any, average: Any, steps_done: jax.Array) -> tuple[Any, Any]:
        return params, update(average, params, steps_done, start)

    def summary(rows: list[dict], method_name: str) -> dict:
        name = f"{method_name}+moving_average"
        if not any(r["method"] == name for r in rows):
            return {}  # A run shorter than the average's start (e.g. a dry run): no rows.
        ma = results.select_training_domain_validation(rows, name)
        return {"moving_average": {"selected": ma["selected"], "last": ma["last"]}}

    return Method(
        name="moving_average",
        init_extras=init_extras,
        post_update=post_update,
        eval_weights=lambda average, step: {"moving_average": average} if step >= start else {},
        summary=summary,
    )
