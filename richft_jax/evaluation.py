"""Evaluation: every split of every domain once, features over the mesh, end-of-run evaluators.

ID and OOD are defined once, by `DomainData.id_splits` / `ood_splits` (training domains'
out splits / test domains' in splits, as DomainBed); everything here asks them. End-of-run
evaluators are chosen by `config.measure` (as big_vision's evaluators): each takes the run's
context and the pretrained / final variables and returns summary fields.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from richft_jax import config_checks, parallel, steps
from richft_jax.analysis import feature_distortion, noise_stability
from richft_jax.data import pipeline, pixels
from richft_jax.data.splits import seed_hash
from richft_jax.methods import self_labeling


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators and method hooks need of a run besides its variables."""

    config: ml_collections.ConfigDict
    model: Any
    data: pipeline.DomainData
    mesh: Any


def eval_augmentation(config: ml_collections.ConfigDict, step_label: int) -> tuple[str, int]:
    """(augmentation kind, seed) of the evaluation labelled `step_label`.

    config.data.eval_augment="training_domains" is DomainBed's default (trainv2.py without
    --outsplit_noaug): the training domains' splits are seen through the training augmentation,
    drawn from a key fixed by (run seed, step label), so the same label sees the same images.
    "none": every split unaugmented.
    """
    kind = config_checks.eval_augment(config)
    if kind == "none" or config.data.augment == "none":
        return "none", 0
    return config.data.augment, seed_hash(config.seed, "eval_augment", step_label)


def split_limit(
    split: pipeline.Split, max_examples: int | None, train_in_max: int | None
) -> int | None:
    """How many of a split's examples an evaluation reads (None: all, 0: none): `max_examples`
    for every split (config.data.eval_max_examples), and for the training domains' "in" splits
    also `train_in_max` (config.data.eval_train_in_max_examples)."""
    limit = max_examples or None
    if train_in_max is not None and split.split == "in" and not split.is_test_domain:
        limit = train_in_max if limit is None else min(limit, train_in_max)
    return limit


def evaluate(
    eval_step,
    variables: Any,
    data: pipeline.DomainData,
    batch_size: int,
    mesh,
    max_examples: int | None = None,
    augment: tuple[str, int] = ("none", 0),
    train_in_max: int | None = None,
) -> list[tuple[pipeline.Split, dict]]:
    """Accuracy and loss on the in and out splits of every domain, each example once (at most
    `split_limit` of them; a split it gives 0 is left out).

    `augment` = (kind, seed), e.g. from `eval_augmentation`: the training domains' splits go
    through that augmentation, keyed by (seed, domain, split); the test domains never do.
    """
    args = (data, batch_size, mesh, max_examples, augment, train_in_max)
    splits, sums = _split_sums(eval_step, variables, *args)
    return [(split, _values(sums, i)) for i, split in enumerate(splits)]


def evaluate_models(
    models_eval_step, variables: Any, num_models: int, *args, **kwargs
) -> list[list[tuple[pipeline.Split, dict]]]:
    """`evaluate` (the same arguments after `variables`) for K models in one pass over the data
    (`steps.make_models_eval_step`; the variables' params stacked): one list of (split, values)
    per model, in stacking order."""
    splits, sums = _split_sums(models_eval_step, variables, *args, **kwargs)
    return [
        [(split, _values(sums, i, model=k)) for i, split in enumerate(splits)]
        for k in range(num_models)
    ]


def _split_sums(
    eval_step,
    variables,
    data,
    batch_size,
    mesh,
    max_examples=None,
    augment=("none", 0),
    train_in_max=None,
) -> tuple[list[pipeline.Split], steps.SplitSums]:
    """The splits that are read, and their sums on the host: one pass over all of them
    (`pipeline.eval_stream`: one padded batch in all, not one per split)."""
    kind, seed = augment
    parts = []
    for split in data.splits:
        limit = split_limit(split, max_examples, train_in_max)
        if limit != 0:
            aug = "none" if split.is_test_domain else kind
            parts.append((split, limit, aug, seed_hash(seed, split.domain, split.split)))
    sums = steps.merge_on_host(
        [
            eval_step(variables, parallel.global_batch(parallel.host_slice(batch), mesh))
            for batch in pipeline.eval_stream(parts, batch_size)
        ]
    )
    return [split for split, *_ in parts], sums


def _values(sums: steps.SplitSums, index: int, model: int | None = None) -> dict:
    """Split `index`'s values as floats (of one model along a models axis if `model` is
    given), with its example count."""
    if model is not None:
        sums = jax.tree.map(lambda x: x[model], sums)
    return {**sums.values(index), "count": int(sums.count[index])}


def features_on_mesh(model, normalize: str, mesh) -> Callable[[Any, dict], jax.Array]:
    """`(variables, batch) -> penultimate features`, every host feeding its share of the batch
    and getting the features of the whole batch back."""
    features = jax.jit(
        steps.model_features(model, normalize), out_shardings=parallel.replicated(mesh)
    )

    def features_of(variables, batch):
        images = parallel.global_batch(parallel.host_slice(batch), mesh)["image"]
        return features(variables, images)

    return features_of


def split_features(
    features_of: Callable, variables: Any, splits, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every example of `splits`, concatenated (padding dropped)."""
    feats, labels = [], []
    for split in splits:
        for batch in pipeline.eval_batches(split, batch_size):
            f = np.asarray(features_of(variables, batch))
            feats.append(f[batch["mask"]])
            labels.append(batch["label"][batch["mask"]])
    return np.concatenate(feats), np.concatenate(labels)


# ----------------------------------------------------------------------------- evaluators
def measure_feature_distortion(ctx: Context, pretrained: dict, final: dict) -> dict:
    """Penultimate features, pretrained vs final backbone (analysis.feature_distortion)."""
    c = ctx.config
    features_of = features_on_mesh(ctx.model, c.data.normalize, ctx.mesh)
    return feature_distortion.feature_distortion(
        features_of, pretrained, final, ctx.data, c.data.eval_batch_size, c.measure.max_examples
    )


def measure_layer_distances(ctx: Context, pretrained: dict, final: dict) -> dict:
    """|W - W_pretrained| per tensor (the head against zero: it is new)."""
    anchor = self_labeling.anchor_params(pretrained["params"])
    return self_labeling.layer_distances(final["params"], anchor)


def measure_noise_stability(ctx: Context, pretrained: dict, final: dict) -> dict:
    """Relative logit change under Gaussian input and weight noise, on ID and OOD examples."""
    c = ctx.config
    logits_fn = jax.jit(steps.model_logits(ctx.model))
    key = jax.random.PRNGKey(c.seed)
    out = {}
    for name, splits in (("id", ctx.data.id_splits()), ("ood", ctx.data.ood_splits())):
        images = np.concatenate([s.images[: c.measure.max_examples or None] for s in splits])
        x = pixels.normalize(jnp.asarray(images), c.data.normalize)
        out[name] = {
            f"{target}_sigma_{sigma:g}": noise_stability.noise_stability(
                logits_fn, final, x, sigma, key, target
            )
            for target in ("input", "weights")
            for sigma in c.measure.noise_sigmas
        }
    return out


EVALUATORS: dict[str, Callable[[Context, dict, dict], dict]] = {
    "feature_distortion": measure_feature_distortion,
    "layer_distances": measure_layer_distances,
    "noise_stability": measure_noise_stability,
}


def chosen_evaluators(config: ml_collections.ConfigDict) -> list[str]:
    """The end-of-run evaluators switched on in `config.measure`, in a fixed order."""
    return [name for name in EVALUATORS if config.measure.get(name, False)]


def end_of_run(ctx: Context, pretrained: dict, final: dict) -> dict:
    """Summary fields of every chosen evaluator (every host takes part; features use the mesh)."""
    return {
        name: EVALUATORS[name](ctx, pretrained, final) for name in chosen_evaluators(ctx.config)
    }
