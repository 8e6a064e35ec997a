"""Regularized self-labeling (Li & Zhang 2021, "Improved regularization and robustness for
fine-tuning in neural networks").

Three pieces, each plugged into the one train step:
- layer-wise distance constraints: after every optimizer update, each weight tensor is projected
  back into a Frobenius ball around its pretrained value, W <- W0 + (W - W0) min(1, r / |W - W0|),
  with radius r = D gamma^stage growing by gamma per stage from input to output (the stages the
  backbone declares, its `stages()`: e.g. each ViT encoder block is one); the new head's kernel
  is bounded in norm (a ball around 0, radius D_head). The centres (the "anchor") are part
  of the train state, never constants baked into the compiled step.
- self label-correction: from a given step on, a label is replaced by the model's prediction when
  the prediction disagrees and its probability exceeds a threshold (0.9).
- label-reweighting: from a given step on, the loss is sum_i w_i CE_i with in-batch weights
  w = softmax(-CE / tau) (no gradient through the weights).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from richft_jax.methods import weight_space
from richft_jax.methods.method import Method

HEAD = "head"


# ----------------------------------------------------------------------------- distance constraints
Stages = list[tuple[str, tuple[str, ...]]]  # (stage name, "/"-joined parameter-path prefixes).


def backbone_stages(model: nn.Module) -> Stages:
    """The stages the classifier's backbone declares (its `stages()`), input to output: each a
    name and the backbone-relative parameter-path prefixes it owns (models/resnet.py, vit.py,
    demo.py). Declared by the architecture, not guessed from module names."""
    backbone = getattr(model, "backbone", None)
    declare = getattr(backbone, "stages", None)
    if not callable(declare):
        raise ValueError(
            f"self_labeling: the backbone {type(backbone).__name__} declares no stages (a "
            "`stages()` method listing (stage, parameter-path prefixes) from input to output), "
            "so its layers have no radii."
        )
    return declare()


def _matches(prefix: str, names: list[str]) -> bool:
    """Whether a "/"-joined prefix matches the start of a path, whole components only."""
    parts = prefix.split("/")
    return names[: len(parts)] == parts


def stage_index(names: list[str], stages: Stages) -> int:
    """The index of the one stage owning the backbone-relative parameter path `names`; a
    ValueError naming the path when no stage, or more than one, owns it."""
    owners = [
        i for i, (_, prefixes) in enumerate(stages) if any(_matches(p, names) for p in prefixes)
    ]
    if len(owners) != 1:
        found = [stages[i][0] for i in owners]
        raise ValueError(
            f"self_labeling: parameter backbone/{'/'.join(names)} must belong to exactly one "
            f"declared backbone stage, found {found or 'none'} (stages: {[n for n, _ in stages]})."
        )
    return owners[0]


def projection_radii(
    params: Any, stages: Stages, radius: float, gamma: float, head_radius: float | None
) -> Any:
    """A tree like `params` of ball radii: D gamma^s for a backbone leaf of declared stage s
    (`backbone_stages`), `head_radius` for the head's kernel, inf (unconstrained) for the
    head's bias or when a radius is None. Every backbone parameter must fall in exactly one
    stage and every stage must own a parameter (else the gamma powers would be off)."""
    used: set[int] = set()

    def leaf_radius(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        if names[0] == HEAD:
            bounded = names[-1] == "kernel" and head_radius is not None
            return float(head_radius) if bounded else float("inf")
        if names[0] != "backbone":
            raise ValueError(
                f"self_labeling: parameter {'/'.join(names)} is neither in the backbone nor "
                "the head; no stage to give it a radius."
            )
        stage = stage_index(names[1:], stages)
        used.add(stage)
        return float("inf") if radius is None else float(radius) * float(gamma) ** stage

    radii = jax.tree_util.tree_map_with_path(leaf_radius, params)
    empty = [name for i, (name, _) in enumerate(stages) if i not in used]
    if empty:
        raise ValueError(
            f"self_labeling: declared backbone stages {empty} own no parameter; the backbone's "
            "stages() and its parameters disagree."
        )
    return radii


def anchor_params(pretrained: Any) -> Any:
    """The projection centres: the pretrained parameters, with zeros for the new head (whose
    norm is bounded, not its distance to a random init). A copy, safe to donate."""
    return {
        k: jax.tree.map(jnp.zeros_like, v) if k == HEAD else weight_space.copy_tree(v)
        for k, v in pretrained.items()
    }


def project(params: Any, anchor: Any, radii: Any) -> Any:
    """Projects every tensor into its Frobenius ball: W0 + (W - W0) min(1, r / |W - W0|)."""

    def one(w, w0, r):
        delta = w - w0
        norm = jnp.sqrt(jnp.sum(jnp.square(delta)))
        scale = jnp.minimum(1.0, r / jnp.maximum(norm, 1e-12))
        return w0 + delta * scale.astype(w.dtype)

    return jax.tree.map(one, params, anchor, radii)


def layer_distances(params: Any, anchor: Any) -> dict[str, float]:
    """Frobenius distance of every tensor from its anchor, keyed by "/"-joined path."""
    flat = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda a, b: a - b, params, anchor))
    return {
        "/".join(getattr(p, "key", str(p)) for p in path): float(np.linalg.norm(np.asarray(d)))
        for path, d in flat[0]
    }


# ----------------------------------------------------------------------------- labels
def correct_labels(logits: jax.Array, labels: jax.Array, threshold: float) -> jax.Array:
    """Replaces a label by the prediction where max probability > threshold and they differ."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    pred = jnp.argmax(probs, -1).astype(labels.dtype)
    confident = jnp.max(probs, -1) > threshold
    return jnp.where(confident & (pred != labels), pred, labels)


def reweight(losses: jax.Array, temperature: float) -> jax.Array:
    """In-batch example weights softmax(-CE/tau): they sum to one, low-loss examples weigh more."""
    return jax.nn.softmax(-losses / temperature)


def make_label_transform(
    cfg: ml_collections.ConfigDict,
) -> Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]] | None:
    """`(logits, labels, step) -> (labels, per-example CE weights)` from `config.self_labeling`,
    or None when neither correction nor reweighting is on. Starts are compared with the traced
    step, so switching on mid-run never recompiles."""
    correction, reweighting = cfg.correction_start, cfg.reweight_start
    if correction is None and reweighting is None:
        return None

    def transform(logits, labels, step):
        logits = jax.lax.stop_gradient(logits)
        if correction is not None:
            fixed = correct_labels(logits, labels, cfg.correction_threshold)
            labels = jnp.where(step >= correction, fixed, labels)
        n = labels.shape[0]
        weights = jnp.full((n,), 1.0 / n, jnp.float32)
        if reweighting is not None:
            ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1)[:, 0]
            weights = jnp.where(
                step >= reweighting, reweight(ce, cfg.reweight_temperature), weights
            )
        return labels, weights

    return transform


def constrained(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the distance constraints (hence the anchor in the train state) are on."""
    return cfg.radius is not None or cfg.head_radius is not None


# ----------------------------------------------------------------------------- hooks
def method(
    config: ml_collections.ConfigDict, model: nn.Module, image_shape: tuple[int, ...]
) -> Method | None:
    """Distance constraints (anchor in the state, projection after each update) and the label
    transform, as configured in `config.self_labeling`; None when all are off."""
    cfg = config.self_labeling
    label_transform = make_label_transform(cfg)
    if not constrained(cfg) and label_transform is None:
        return None
    if not constrained(cfg):
        return Method(name="self_labeling", label_transform=label_transform)
    del image_shape  # The stages are declared by the backbone, not traced.
    stages = backbone_stages(model)

    def post_update(params: Any, anchor: Any, steps_done: jax.Array) -> tuple[Any, Any]:
        # The radii depend only on parameter paths: the same floats whenever they are built.
        radii = projection_radii(params, stages, cfg.radius, cfg.gamma, cfg.head_radius)
        return project(params, anchor, radii), anchor

    return Method(
        name="self_labeling",
        init_extras=anchor_params,
        post_update=post_update,
        label_transform=label_transform,
    )
