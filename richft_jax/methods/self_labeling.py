"""Regularized self-labeling (Li & Zhang 2021, "Improved regularization and robustness for
fine-tuning in neural networks").

Three pieces, each plugged into the one train step:
- layer-wise distance constraints: after every optimizer update, each weight tensor is projected
  back into a Frobenius ball around its pretrained value, W <- W0 + (W - W0) min(1, r / |W - W0|),
  with radius r = D gamma^stage growing by gamma per stage from input to output; the new head's
  kernel is bounded in norm (a ball around 0, radius D_head). The centres (the "anchor") are part
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

from richft_jax.methods.method import Method

HEAD = "head"


# ----------------------------------------------------------------------------- distance constraints
def backbone_stage_order(model: nn.Module, image_shape: tuple[int, ...]) -> list[str]:
    """Stage names of the classifier's backbone in forward (input-to-output) order.

    A stage is the prefix before the first "_" of a top-level backbone submodule's name
    ("stage2_block1" -> "stage2", "block3_attn" -> "block3", "stem_conv" -> "stem"); the order
    is the order of the first call during an abstract forward pass, so it never depends on
    how a parameter dict happens to be sorted.
    """
    order: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        path = context.module.path
        if len(path) == 2 and path[0] == "backbone":
            stage = path[1].split("_")[0]
            if stage not in order:
                order.append(stage)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
        )
    return order


def projection_radii(
    params: Any, stage_order: list[str], radius: float, gamma: float, head_radius: float | None
) -> Any:
    """A tree like `params` of ball radii: D gamma^s for a backbone leaf of stage s (parameters
    directly on the backbone, e.g. a position embedding, are stage 0), `head_radius` for the
    head's kernel, inf (unconstrained) for the head's bias or when a radius is None."""
    stages = {name: i for i, name in enumerate(stage_order)}

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
        if len(names) == 2:  # A parameter of the backbone module itself (e.g. pos_embedding).
            stage = 0
        else:
            prefix = names[1].split("_")[0]
            if prefix not in stages:
                raise ValueError(
                    f"self_labeling: parameter {'/'.join(names)} belongs to no stage seen in "
                    f"the forward pass ({stage_order})."
                )
            stage = stages[prefix]
        return float("inf") if radius is None else float(radius) * float(gamma) ** stage

    return jax.tree_util.tree_map_with_path(leaf_radius, params)


def anchor_params(pretrained: Any) -> Any:
    """The projection centres: the pretrained parameters, with zeros for the new head (whose
    norm is bounded, not its distance to a random init). A copy, safe to donate."""
    return {
        k: jax.tree.map(jnp.zeros_like if k == HEAD else (lambda x: jnp.array(x, copy=True)), v)
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


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Clear errors naming the `config.self_labeling` key with a bad value."""
    for key in ("radius", "head_radius"):
        if cfg[key] is not None and cfg[key] <= 0:
            raise ValueError(f"config.self_labeling.{key}={cfg[key]} must be positive (or None).")
    if cfg.gamma <= 0:
        raise ValueError(f"config.self_labeling.gamma={cfg.gamma} must be positive.")
    if not 0.0 < cfg.correction_threshold < 1.0:
        raise ValueError(
            f"config.self_labeling.correction_threshold={cfg.correction_threshold} must be in "
            "(0, 1)."
        )
    if cfg.reweight_temperature <= 0:
        raise ValueError(
            f"config.self_labeling.reweight_temperature={cfg.reweight_temperature} must be "
            "positive."
        )


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
    stages = backbone_stage_order(model, image_shape)

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
