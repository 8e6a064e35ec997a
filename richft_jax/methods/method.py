"""What one method adds to a run: a record of optional hook functions.

Each method module has `method(config, ...) -> Method | None` (None: off in this config);
`richft_jax.methods.hooks` composes the methods a config switches on into one `Hooks`, which
is all the train loop knows of them.
"""

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Method:
    """One method's hooks; every one optional.

    - transform_data(data) -> data: e.g. label noise in the training splits.
    - prepare_params(ctx, params, batch_stats) -> params: θ0 changes that need the data, e.g.
      LP-FT's linear-probe head.
    - init_extras(params) -> pytree: the method's state, kept in `TrainState.extras[name]`.
    - post_update(params, extras, steps_done) -> (params, extras): inside the jitted step,
      after the optimizer update.
    - label_transform(logits, labels, step) -> (labels, example weights): inside the step.
    - eval_weights(extras, step) -> {suffix: params}: more weights evaluated beside the model,
      written as rows of method "<method>+<suffix>".
    - initial_weights(params) -> {row name: params}: evaluated once at step 0 of a fresh run.
    - summary(rows, method) -> dict: fields added to summary.json.
    """

    name: str
    transform_data: Callable | None = None
    prepare_params: Callable | None = None
    init_extras: Callable[[Any], Any] | None = None
    post_update: Callable | None = None
    label_transform: Callable | None = None
    eval_weights: Callable | None = None
    initial_weights: Callable | None = None
    summary: Callable | None = None
