"""The train state, the optimizer and the pure train / eval steps.

`create_train_state` is the one place a `TrainState` is built; the step factories return pure
functions of (state, batch, rates) that train.py jits once over the device mesh. A method
changes a step only through its hooks (`richft_jax.methods.hooks`): rates, label transform,
post-update and extra state in `TrainState.extras`.
"""

import collections
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics

from richft_jax import parallel
from richft_jax.data import pixels
from richft_jax.methods import weight_space


# ----------------------------------------------------------------------------- state & metrics
@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a plain pytree, checkpointed whole."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # The run's root key (raw uint32[2]); per-step keys are fold_in(rng, step).
    extras: Any = None  # Method state by method name (e.g. the running weight average); {}.


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("correct")
    grad_norm: metrics.Average.from_output("grad_norm")
    param_norm: metrics.LastValue.from_output("param_norm")
    learning_rate: metrics.LastValue.from_output("learning_rate")


@flax.struct.dataclass
class SplitSums:
    """An evaluation's sums per split (the last axis; a leading models axis when several were
    evaluated): loss, correct predictions and examples. `merge` adds a later batch's."""

    loss: jax.Array
    correct: jax.Array
    count: jax.Array

    def merge(self, other: "SplitSums") -> "SplitSums":
        return jax.tree.map(lambda a, b: a + b, self, other)

    def values(self, index: int) -> dict[str, float]:
        """The loss and accuracy of split `index` (sums indexed `[..., index]`)."""
        n = float(self.count[..., index])
        return {
            "loss": float(self.loss[..., index]) / n,
            "accuracy": float(self.correct[..., index]) / n,
        }


def keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
    """(init key, root key of the train state), both from config.seed."""
    init_key, root = _split_seed(config.seed)
    return init_key, root


@functools.partial(jax.jit, static_argnums=0)  # One program, not one per eager op.
def _split_seed(seed: int) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed))


def create_train_state(
    params: Any, batch_stats: Any, tx: optax.GradientTransformation, rng: jax.Array, extras=None
) -> TrainState:
    """A fresh state at step 0; `extras` is the methods' own state (`Hooks.init_extras`). The
    optimizer state comes from one compiled program (eagerly, each leaf's zeros compile alone)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=jax.jit(tx.init)(params),
        rng=rng,
        extras={} if extras is None else extras,
    )


def merge_on_host(step_metrics: list[Any]) -> Any:
    """Per-step (or per-batch) metrics (TrainMetrics, SplitSums: anything with `merge`) fetched
    and merged in numpy, at a logging boundary; None for none.

    Merging on the devices would launch small eager computations between the in-flight
    steps; on CPU with 8 simulated devices under load that aborted XLA's in-process
    all-reduce now and then. On the host it cannot, and the loop has no per-step dispatches.
    """
    if not step_metrics:
        return None
    return functools.reduce(lambda a, b: a.merge(b), jax.device_get(step_metrics))


# ----------------------------------------------------------------------------- optimizer
def make_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The base learning-rate schedule: step decay at fractions of training (or at the update
    indices optim.decay_steps, as torch's MultiStepLR milestones), or cosine."""
    if optim.schedule == "step":
        # The update of 0-based index b (schedule(b): b updates done before it) is the first at
        # the decayed rate; in "domainbed" step labels it is the one that writes label b.
        at = optim.get("decay_steps") or [int(f * num_steps) for f in optim.decay_at]
        boundaries = {int(b): optim.decay_factor for b in at}
        schedule = optax.piecewise_constant_schedule(optim.lr, boundaries)
    elif optim.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(optim.lr, max(num_steps - optim.warmup_steps, 1))
    elif optim.schedule == "constant":
        schedule = optax.constant_schedule(optim.lr)
    else:
        raise ValueError(f"config.optim.schedule: unknown schedule {optim.schedule!r}.")
    if optim.warmup_steps:
        warmup = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [optim.warmup_steps])
    return schedule


def param_labels(params: Any) -> Any:
    """'head' for the new linear classifier, 'backbone' for everything else."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "head" if path[0].key == "head" else "backbone", params
    )


def learning_rates(optim: ml_collections.ConfigDict, num_steps: int) -> np.ndarray:
    """The base learning rate of each update (index: the updates done before it), float32 on
    the host. The loop gives each to the step as an argument, so the schedule's constants stay
    out of the compiled step: runs of other lengths or rates share one compiled step."""
    schedule = jax.jit(jax.vmap(make_schedule(optim, num_steps)))
    return np.asarray(schedule(jnp.arange(num_steps)), np.float32)


def scale_by_learning_rate_argument(factor: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """Updates times -(learning_rate x factor), the learning rate given to each `update` call
    (`tx.update(grads, state, params, learning_rate=lr)`), as optax's scale_by_learning_rate
    does with a schedule of its own."""

    def update(updates, state, params=None, *, learning_rate, **extra_args):
        del params, extra_args
        step_size = -(learning_rate * factor)
        return jax.tree.map(lambda g: jnp.asarray(step_size, g.dtype) * g, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """SGD with momentum and coupled weight decay (as torch), or AdamW; head lr x factor. Each
    update takes its base learning rate as an argument (`learning_rates`): optax's sgd and
    adamw with the learning-rate scaling last, as theirs."""

    def one(factor: float) -> optax.GradientTransformation:
        scale = scale_by_learning_rate_argument(factor)
        if optim.name == "sgd":
            return optax.chain(
                optax.add_decayed_weights(optim.weight_decay),
                optax.trace(decay=optim.momentum),
                scale,
            )
        if optim.name == "adamw":
            return optax.chain(
                optax.scale_by_adam(), optax.add_decayed_weights(optim.weight_decay), scale
            )
        raise ValueError(f"config.optim.name: unknown optimizer {optim.name!r} (sgd | adamw).")

    return optax.multi_transform(
        {"backbone": one(1.0), "head": one(optim.head_lr_factor)}, param_labels
    )


# ----------------------------------------------------------------------------- steps
def _no_post_update(params: Any, extras: Any, step: jax.Array) -> tuple[Any, Any]:
    return params, extras


def make_loss(model, normalize: str, label_transform: Callable | None = None) -> Callable:
    """The train step's loss: `(params, batch_stats, batch, rates, key, step) -> (loss,
    (logits, new batch_stats))`, differentiated in `params`; `rates` as make_train_step's.
    Also what the benchmarks trace to count what the backward pass keeps."""

    def loss_fn(params, batch_stats, batch: dict, rates: jax.Array | dict, key, step):
        rates = dict(rates) if isinstance(rates, dict) else {"feature": rates}
        feature_rate = rates.pop("feature")
        (logits, _), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            pixels.normalize(batch["image"], normalize),
            train=True,
            dropout_rate=feature_rate,
            backbone_rates=rates,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        labels, weights = batch["label"], None
        if label_transform is not None:
            labels, weights = label_transform(logits, labels, step)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        loss = ce.mean() if weights is None else jnp.sum(weights * ce)
        return loss, (logits, updates.get("batch_stats", batch_stats))

    return loss_fn


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    normalize: str,
    label_transform: Callable | None = None,
    post_update: Callable = _no_post_update,
) -> Callable[..., tuple[TrainState, TrainMetrics]]:
    """Returns the pure step `(state, batch, rates, learning_rate) -> (state, TrainMetrics)`.

    `rates` is the feature-dropout rate, or a dict of rates ("feature" and the backbone's own,
    e.g. "drop_path_rate"); `learning_rate` the update's base rate (`learning_rates`). Method
    hooks: `label_transform(logits, labels, step) -> (labels, example weights)` and
    `post_update(params, extras, steps_done) -> (params, extras)`.
    """

    loss_fn = make_loss(model, normalize, label_transform)

    def train_step(
        state: TrainState, batch: dict, rates: jax.Array | dict, learning_rate: jax.Array
    ):
        key = jax.random.fold_in(state.rng, state.step)
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch, rates, key, state.step
        )
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, learning_rate=learning_rate
        )
        params = optax.apply_updates(state.params, updates)
        params, extras = post_update(params, state.extras, state.step + 1)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            extras=extras,
        )
        m = TrainMetrics.single_from_model_output(
            loss=loss,
            correct=(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            learning_rate=learning_rate,
        )
        return new_state, m

    return train_step


# How many (model, arguments) entries each `jit_per_model` function keeps, least recently used
# out first: a notebook or a test process goes through a few architectures, not hundreds.
JIT_PER_MODEL_SIZE = 16


def jit_per_model(make: Callable[..., Callable]) -> Callable[..., Callable]:
    """`make(model, *args)` jitted, once per process for each (model, *args): later runs of an
    architecture in the process (tests, notebooks, analyses, sweeps in one process) neither
    trace nor lower it again. A model is keyed by its repr (a Flax module's fields, lists
    included, which a hash would refuse); the other arguments must be hashable."""
    cache: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()

    @functools.wraps(make)
    def jitted(model, *args):
        key = (repr(model), *args)
        if key not in cache:
            cache[key] = jax.jit(make(model, *args))
            while len(cache) > JIT_PER_MODEL_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    jitted.cache = cache
    return jitted


def model_logits(model) -> Callable[[dict, jax.Array], jax.Array]:
    """`(variables, images) -> logits` of one model in eval mode (no dropout)."""
    return lambda variables, images: model.apply(variables, images, train=False)[0]


def model_features(model, normalize: str) -> Callable[[dict, jax.Array], jax.Array]:
    """`(variables, raw images) -> penultimate features` in eval mode."""
    return lambda v, x: model.apply(v, pixels.normalize(x, normalize), train=False)[1]["features"]


def make_eval_step(
    logits_fn: Callable[[Any, jax.Array], jax.Array], normalize: str
) -> Callable[[Any, dict], SplitSums]:
    """Returns `(variables, batch) -> SplitSums` over the splits of a batch of
    `pipeline.eval_stream` (its "segment" says which split each row is of).

    `logits_fn` is one model (`model_logits`) or any combination of models, e.g. a vmapped
    ensemble over stacked variables: evaluation is the same for all of them.
    """

    def eval_step(variables, batch):
        images = pixels.normalize(batch["image"], normalize)
        return eval_metrics(logits_fn(variables, images), batch)

    return eval_step


def make_models_eval_step(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    normalize: str,
    models_per_pass: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[Any, dict], SplitSums]:
    """Returns `({"params": K stacked trees, **shared}, batch) -> SplitSums` with a leading
    axis of K: several models that share everything but their parameters (a run's weights and
    their moving average) evaluated in one pass over the data. `models_per_pass`: 0 vmaps all
    K on accelerators and one at a time on a CPU (`weight_space.models_per_pass`), N that many
    at a time (`weight_space.stacked_logits`). With the batch's `mesh`,
    each device runs the K models on its own share (`parallel.per_device`)."""

    def stacked_logits(variables, images):
        apply = lambda p, x: logits_fn({**variables, "params": p}, x)  # noqa: E731
        return weight_space.stacked_logits(
            apply, variables["params"], images, weight_space.models_per_pass(models_per_pass)
        )

    if mesh is not None:
        stacked_logits = parallel.per_device(stacked_logits, mesh, out_batch_axis=1)

    def eval_step(variables, batch):
        logits = stacked_logits(variables, pixels.normalize(batch["image"], normalize))
        return jax.vmap(eval_metrics, in_axes=(0, None))(logits, batch)

    return eval_step


def eval_metrics(logits: jax.Array, batch: dict) -> SplitSums:
    """Per-split sums of the loss and accuracy of [N, C] logits: batch["segment"] is [N, S],
    row i one-hot in the split of example i (all zero for padding, which counts nowhere)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    segment = batch["segment"] > 0
    per_split = lambda v: jnp.where(segment, v[:, None], 0.0).sum(0)  # noqa: E731 (NaN-safe)
    return SplitSums(per_split(loss), per_split(correct), segment.sum(0).astype(jnp.float32))
