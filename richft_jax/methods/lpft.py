"""Linear probing (LP) and LP-FT (Kumar et al. 2022).

LP: multinomial logistic regression on frozen, standardised penultimate features, with the
L2 strength chosen on in-distribution validation over a log-spaced grid of C (as the LP-FT
code sweeps C over logspace(-7, 2)), solved in JAX with L-BFGS. The same objective as
scikit-learn's LogisticRegression: C * sum_i CE_i + ||W||^2 / 2 (bias not penalised).
LP-FT: fine-tuning starts from the LP head instead of a fresh one (`config.lp_head=True`);
in the train loop the LP model is evaluated at step 0 and written as method "lp".

Config: `config.lp_c_grid`, the C values tried (a sequence of floats; base_config's default is
C_GRID, the LP-FT code's logspace(-7, 2, 10)). Each C is one L-BFGS fit of MAX_ITER iterations,
warm-started from the previous C's solution: a shorter grid is proportionally cheaper (the
end-to-end test uses three values).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from richft_jax import config_lib, evaluation
from richft_jax.methods.method import Method

C_GRID = config_lib.LP_C_GRID  # The LP-FT code's grid of C: config.lp_c_grid's default.
MAX_ITER = 500  # L-BFGS iterations per C.


def fit_logistic_regression(
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    c: float,
    max_iter: int = 500,
    init: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(W [d, k], b [k]) minimising C * sum CE + ||W||^2 / 2 by L-BFGS (warm start: `init`)."""
    n, d = features.shape
    onehot = jax.nn.one_hot(labels, num_classes)

    def loss(params):
        w, b = params
        logits = features @ w + b
        ce = -jnp.sum(onehot * jax.nn.log_softmax(logits))
        # Scaled by 1/(C n) so the optimiser sees an O(1) objective with the same minimiser.
        return (ce + 0.5 * jnp.sum(w * w) / c) / n

    params = init if init is not None else (jnp.zeros((d, num_classes)), jnp.zeros(num_classes))
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=max_iter)
    return params


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    cs: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
) -> dict:
    """Standardises features, fits LR for each C (warm-started, small to large), keeps the C with
    the best validation accuracy, and folds the standardisation into the returned head so that
    it applies to raw features: logits = features @ kernel + bias."""
    mean = train_features.mean(0)
    std = train_features.std(0) + 1e-6
    xs = jnp.asarray((train_features - mean) / std)
    xv = jnp.asarray((val_features - mean) / std)
    fit = jax.jit(fit_logistic_regression, static_argnums=(2, 4))
    best, params, scores = None, None, []
    for c in cs:
        params = fit(xs, jnp.asarray(train_labels), num_classes, float(c), max_iter, params)
        acc = float(jnp.mean(jnp.argmax(xv @ params[0] + params[1], -1) == val_labels))
        scores.append((float(c), acc))
        if best is None or acc > best[1]:
            best = (float(c), acc, params)
    c, acc, (w, b) = best
    kernel = w / std[:, None]
    bias = b - (mean / std) @ w
    return {"kernel": kernel, "bias": bias, "c": c, "val_accuracy": acc, "scores": scores}


# ----------------------------------------------------------------------------- hooks
def linear_probe_head(ctx: evaluation.Context, params: dict, batch_stats: dict) -> dict:
    """LP-FT's head: logistic regression on the frozen features of the training domains' in
    splits, its L2 strength chosen on their out splits (ID validation)."""
    c, data = ctx.config, ctx.data
    features_of = evaluation.features_on_mesh(ctx.model, c.data.normalize, ctx.mesh)
    variables = {"params": params, "batch_stats": batch_stats}
    xt, yt = evaluation.split_features(
        features_of,
        variables,
        [data.get(d, "in") for d in data.train_domains],
        c.data.eval_batch_size,
    )
    # Validation: the ID splits (training domains' out splits, in domain order).
    xv, yv = evaluation.split_features(
        features_of, variables, data.id_splits(), c.data.eval_batch_size
    )
    probe = linear_probe(xt, yt, xv, yv, data.num_classes, c_grid(c))
    logging.info(
        "Linear probe: C=%g, ID validation accuracy %.4f (grid %s).",
        probe["c"],
        probe["val_accuracy"],
        probe["scores"],
    )
    return {"kernel": np.asarray(probe["kernel"]), "bias": np.asarray(probe["bias"])}


def c_grid(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """The C values the probe tries: `config.lp_c_grid` (a list where config.json gave it back)
    as floats. None, an empty grid, or a C that is not positive, is refused. A run recorded
    before the key existed (its config.json lacks it) probed C_GRID, the only grid then."""
    grid = config.get("lp_c_grid", C_GRID)
    cs = tuple(float(c) for c in (() if grid is None else grid))
    if not cs or min(cs) <= 0:
        raise ValueError(f"config.lp_c_grid={grid!r}: give one or more positive values of C.")
    return cs


def method(config: ml_collections.ConfigDict) -> Method | None:
    """LP-FT (`config.lp_head`): θ0's head is the linear probe; LP is logged as step 0."""
    if not config.get("lp_head", False):
        return None

    def prepare_params(ctx: evaluation.Context, params: dict, batch_stats: dict) -> dict:
        return {**params, "head": linear_probe_head(ctx, params, batch_stats)}

    return Method(
        name="lpft",
        prepare_params=prepare_params,
        initial_weights=lambda params: {"lp": params},
    )
