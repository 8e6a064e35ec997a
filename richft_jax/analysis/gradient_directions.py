"""The measurements behind early dropout (Liu et al. 2023, "Dropout reduces underfitting").

Two runs of the same config from the same start and batches: without dropout, and with early
dropout (rate p until the cutoff, then 0). During the early phase, every `measure_every` steps:
the variance of the mini-batch gradient directions (mean pairwise cosine distance 1 - cos over
M fixed mini-batches, each with its own dropout mask) and their mean cosine alignment with the
full-dataset gradient (all training examples, no dropout). At the end: the training loss on the
full training set without dropout (of an underfitting model, early dropout should lower it).
The run (data, model, θ0, train state) is the run builder's and the steps are the train
loop's own (`richft_jax.run`, `richft_jax.steps`). The command line is
`richft_jax.analysis.gradient_stats`.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from richft_jax import run, steps
from richft_jax.data import pipeline, pixels
from richft_jax.methods import feature_dropout
from richft_jax.methods import hooks as hooks_lib


def direction_stats(minibatch: list, full) -> dict[str, float]:
    """Mean pairwise cosine distance of the mini-batch gradients (their direction variance) and
    their mean cosine similarity with the full-dataset gradient."""
    vecs = np.stack([_flat(g) for g in minibatch])
    units = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-30)
    full_unit = _flat(full) / max(np.linalg.norm(_flat(full)), 1e-30)
    m = len(units)
    cos = units @ units.T
    pairwise = (1.0 - cos)[np.triu_indices(m, 1)]
    return {
        "direction_variance": float(pairwise.mean()) if m > 1 else 0.0,
        "alignment_with_full": float(np.mean(units @ full_unit)),
    }


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def run_once(config: ml_collections.ConfigDict, rate: float, args: dict) -> dict:
    """One run with early dropout at `rate` (0: none): early-phase gradient stats, final loss."""
    # The run's own data, model, θ0 and train state (the run builder's, as train.py's), and
    # the loop's own step; only the dropout rates follow the early schedule given here.
    data = run.load_data(config)
    model = run.build_model(config, data.num_classes)
    tx = steps.make_optimizer(config.optim)
    learning_rates = steps.learning_rates(config.optim, args["steps"])
    theta0 = run.init_variables(config, model, data)
    params, batch_stats = theta0["params"], theta0["batch_stats"]
    hooks = hooks_lib.build(config, model, data.splits[0].images.shape[1:])
    _, root = steps.keys(config)
    state = steps.create_train_state(params, batch_stats, tx, root, hooks.init_extras(params))
    norm = config.data.normalize
    step_fn = jax.jit(
        steps.make_train_step(model, tx, norm, hooks.label_transform, hooks.post_update)
    )

    # BatchNorm in training mode (from-scratch runs, model.freeze_bn=False) normalises with
    # the batch's statistics; its running-statistics update is not needed here.
    mutable = False if config.model.freeze_bn else ["batch_stats"]

    def loss_sum(params, batch, rate, key):
        out = model.apply(
            {"params": params, "batch_stats": batch_stats},
            pixels.normalize(batch["image"], norm),
            train=True,
            dropout_rate=rate,
            rngs={"dropout": key},
            mutable=mutable,
        )
        logits, _ = out[0] if mutable else out
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        mask = batch.get("mask", jnp.ones_like(ce))  # Training batches have no padding.
        return jnp.sum(ce * mask), jnp.sum(mask)

    grad_sum = jax.jit(jax.grad(lambda p, b, r, k: loss_sum(p, b, r, k)[0]))
    loss_and_count = jax.jit(loss_sum)
    train_splits = [data.get(d, "in") for d in data.train_domains]
    full_batches = [
        b for s in train_splits for b in pipeline.eval_batches(s, 256, args["max_examples"])
    ]
    n_full = sum(int(b["mask"].sum()) for b in full_batches)
    probe = pipeline.train_dataset(
        data,
        seed=config.seed + 1000,
        batch_size_per_domain=config.data.batch_size_per_domain,
        start_step=0,
        num_steps=args["num_batches"],
    ).as_numpy_iterator()
    probe_batches = list(probe)
    batches = pipeline.train_dataset(
        data,
        seed=config.seed,
        batch_size_per_domain=config.data.batch_size_per_domain,
        start_step=0,
        num_steps=args["steps"],
        augment=config.data.augment,
    ).as_numpy_iterator()
    rate_of = feature_dropout.rate_schedule("early", rate, args["cutoff"])
    measurements = []
    for step, batch in enumerate(batches):
        if step < args["cutoff"] and step % args["measure_every"] == 0:
            zero = jnp.float32(0.0)
            sums = [grad_sum(state.params, b, zero, jax.random.key(0)) for b in full_batches]
            # Summed on the host: no eager device work between in-flight steps (train.py).
            full = jax.tree.map(lambda g: g / n_full, _tree_sum(jax.device_get(sums)))
            mini = [
                grad_sum(state.params, b, jnp.float32(rate), jax.random.key(1000 * step + i))
                for i, b in enumerate(probe_batches)
            ]
            measurements.append({"step": step, **direction_stats(mini, full)})
        state, _ = step_fn(state, batch, jnp.float32(rate_of(step)), learning_rates[step])
    total, count = 0.0, 0.0
    for b in full_batches:
        loss, n = loss_and_count(state.params, b, jnp.float32(0.0), jax.random.key(0))
        total, count = total + float(loss), count + float(n)
    return {
        "rate": rate,
        "early_phase": measurements,
        **{
            f"mean_{k}": float(np.mean([m[k] for m in measurements]))
            for k in ("direction_variance", "alignment_with_full")
        },
        "final_train_loss": total / count,
    }


def _tree_sum(trees: list):
    return jax.tree.map(lambda *xs: sum(xs), *trees)


def gradient_stats(config: ml_collections.ConfigDict, args: dict) -> dict:
    """Both runs (no dropout, early dropout) and their settings."""
    return {
        "config_name": config.config_name,
        "settings": args,
        "no_dropout": run_once(config, 0.0, args),
        "early_dropout": run_once(config, args["rate"], args),
    }
