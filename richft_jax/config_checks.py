"""Every config check a run makes before it starts, and the tables they check against: the
choices of run.py's keys, the backbones and their block-dropout rates (models/registry.py
checks its classes against this table when imported), the methods' settings (dropout
schedules, label noise, self-labeling, the linear probe's C grid), the evaluation augmentation,
config.pretrained.path.

The one place of these rules and their messages: run.py, the methods, evaluation.py and the
preflight take them from here. Imports nothing heavy (no JAX, Flax, Orbax, TensorFlow or TFDS),
so the preflight names a bad config a second after the command starts, before any of those is
imported.
"""

import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from richft_jax import paths
from richft_jax.models import hub

CHOICES = {
    "data.augment": ("none", "crop", "flip_crop", "domainbed"),
    "data.normalize": ("minus_one_one", "imagenet"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("step", "cosine", "constant"),
}
BLOCK_RATES = ("block_dropout_rate", "drop_path_rate")  # A backbone's own dropout rates.
# The backbones of models.registry.BACKBONES, each with the BLOCK_RATES its __call__ takes.
BACKBONE_RATES: dict[str, tuple[str, ...]] = {
    "small_resnet": (),
    "small_vit": BLOCK_RATES,
    "vit_s16": BLOCK_RATES,
    "vit_b16": BLOCK_RATES,
    "vit_l16": BLOCK_RATES,
    "resnet18": (),
    "resnet50": (),
    "resnet101": (),
}
DROPOUT_SCHEDULES = ("constant", "early", "early_linear", "late")  # methods/feature_dropout.py
LABEL_NOISE_KINDS = ("none", "symmetric", "pairwise")  # methods/label_noise.py
EVAL_AUGMENT = ("none", "training_domains")  # evaluation.eval_augmentation


# The published-layout ViT's attention (models/vit.py): written out, or one of
# jax.nn.dot_product_attention's implementations.
VIT_ATTENTION = ("einsum", "xla", "cudnn")
# The convnets' convolutions (models/layers.py, Conv): "conv" XLA's convolutions, "dot" the ones
# XLA's CPU backend runs slowly as matmuls (layers.conv_as_dot), "auto" dot on a CPU only.
CONV_IMPL = ("auto", "conv", "dot")
# config.model.kwargs keys with a fixed set of values, checked when a config sets them.
MODEL_KWARG_CHOICES = {"attention": VIT_ATTENTION, "conv_impl": CONV_IMPL}
# config.model.kwargs keys that choose how the same function is computed (kernels,
# rematerialisation), not the architecture: a checkpoint's model ignores them.
COMPUTE_KWARGS = ("attention", "conv_impl", "remat")


def architecture_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """config.model.kwargs without COMPUTE_KWARGS: what fixes the function (the model of a
    checkpoint, a PyTorch twin)."""
    return {k: v for k, v in kwargs.items() if k not in COMPUTE_KWARGS}


def not_one_of(key: str, value: object, valid: tuple) -> ValueError:
    """The error of config.KEY=VALUE outside its valid values, naming them."""
    return ValueError(f"config.{key}={value!r} is not one of {valid}.")


def check_choice(key: str, value: object, valid: tuple) -> None:
    """Raises `not_one_of` unless `value` is one of `valid`."""
    if value not in valid:
        raise not_one_of(key, value, valid)


def check_table(what: str, classes: Mapping[str, Any], table: Mapping, entry: Callable) -> None:
    """Holds a registry of classes to the table that describes them (`entry(cls)` is what the
    table should say): a ValueError naming each class missing from the table, each entry
    without a class, and each wrong entry. `what` names both, e.g. "registry.BACKBONES and
    config_checks.BACKBONE_RATES (...)"."""
    wrong = [f"{n!r} is not in the table" for n in classes if n not in table]
    wrong += [f"{n!r} has no class" for n in table if n not in classes]
    for name in (n for n in classes if n in table):
        if (found := entry(classes[name])) != table[name]:
            wrong.append(f"{name!r} is {found}, the table says {table[name]}")
    if wrong:
        raise ValueError(f"{what} disagree: {'; '.join(wrong)}. Update the table.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the config key, on values the loop would only trip on later."""
    if errors := config_errors(config):
        raise errors[0]


def config_errors(config: ml_collections.ConfigDict) -> list[ValueError]:
    """Every error of `validate_config`, in its order, not only the first (the preflight
    reports them all at once)."""
    errors = []
    choices = {**CHOICES, "model.name": tuple(BACKBONE_RATES)}
    for key, valid in choices.items():
        section, name = key.split(".")
        if config[section][name] not in valid:
            errors.append(not_one_of(key, config[section][name], valid))
    for name, valid in MODEL_KWARG_CHOICES.items():
        value = config.model.kwargs.get(name)
        if value is not None and value not in valid:
            errors.append(not_one_of(f"model.kwargs.{name}", value, valid))
    checks = [validate_pretrained] if config.pretrained.get("path") else []
    if config.model.name in BACKBONE_RATES:  # The methods' checks look the backbone up.
        checks.insert(0, validate_methods)
    for check in checks:
        try:
            check(config)
        except ValueError as e:
            errors.append(e)
    if "lp_c_grid" in config:  # Whether or not config.lp_head uses it: see lp_c_grid.
        try:
            lp_c_grid(config.lp_c_grid)
        except ValueError as e:
            errors.append(e)
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] <= 0:
            errors.append(ValueError(f"config.{key}={config[key]} must be positive."))
    for key in ("eval_max_examples", "eval_train_in_max_examples"):
        value = config.data.get(key)
        if value is not None and value < 0:
            errors.append(
                ValueError(f"config.data.{key}={value} must be >= 0 (or None: every example).")
            )
    per_pass = config.data.get("eval_models_per_pass", 0)
    if per_pass < 0:
        errors.append(
            ValueError(
                f"config.data.eval_models_per_pass={per_pass} must be >= 0 (N: a round's "
                "models N at a time; 0: all at once on GPU/TPU, one at a time on a CPU)."
            )
        )
    return errors


# ----------------------------------------------------------------------------- methods
def validate_methods(config: ml_collections.ConfigDict) -> None:
    """The methods' settings (methods/*.py): the dropout schedule and rates (a block rate only
    for a backbone that has it), label noise, self-labeling."""
    check_choice("dropout_schedule", config.dropout_schedule, DROPOUT_SCHEDULES)
    if not 0.0 <= config.dropout_rate < 1.0:
        raise ValueError(f"config.dropout_rate={config.dropout_rate} must be in [0, 1).")
    for key in BLOCK_RATES:
        if not 0.0 <= config[key] < 1.0:
            raise ValueError(f"config.{key}={config[key]} must be in [0, 1).")
        if config[key] > 0 and key not in BACKBONE_RATES[config.model.name]:
            raise ValueError(
                f"config.{key}={config[key]}: backbone {config.model.name!r} has no {key} "
                "(only backbones with dropout inside their blocks, e.g. small_vit, do)."
            )
    check_label_noise(config.label_noise.kind, config.label_noise.rate)
    validate_self_labeling(config.self_labeling)


def check_label_noise(kind: str, rate: float) -> None:
    """config.label_noise's kind and rate (the fraction of labels changed), the bad one named."""
    check_choice("label_noise.kind", kind, LABEL_NOISE_KINDS)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"config.label_noise.rate={rate} must be in [0, 1].")


def validate_self_labeling(cfg: ml_collections.ConfigDict) -> None:
    """config.self_labeling (methods/self_labeling.py), the key with a bad value named."""
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


def lp_c_grid(grid: object) -> tuple[float, ...]:
    """config.lp_c_grid, the C values methods/lpft.py's linear probe tries, as floats; None, an
    empty grid, a C that is not a number, or one not positive: a ValueError naming the key.

    validate_config checks it whenever the key is present, not only with config.lp_head=True
    (only then is the grid used): a bad value is a bad value, and the preflight names it a
    second into the run, not minutes later when the probe starts."""
    try:
        cs = () if isinstance(grid, str | bytes) else tuple(grid)  # None, a number: TypeError.
    except TypeError:
        cs = ()
    if not cs or not all(
        isinstance(c, numbers.Real) and not isinstance(c, bool) and c > 0 for c in cs
    ):
        raise ValueError(f"config.lp_c_grid={grid!r}: give one or more positive values of C.")
    return tuple(float(c) for c in cs)


def eval_augment(config: ml_collections.ConfigDict) -> str:
    """config.data.eval_augment ("none" when unset), checked against EVAL_AUGMENT."""
    kind = config.data.get("eval_augment", "none")
    check_choice("data.eval_augment", kind, EVAL_AUGMENT)
    return kind


# ----------------------------------------------------------------------------- weights
def published_weights(value: str | None) -> hub.Weights | None:
    """The registry entry when config.pretrained.path is a registered name (e.g. "resnet50",
    "vit_b16": published weights, downloaded once), else None (a local path)."""
    return hub.WEIGHTS.get(value) if isinstance(value, str) else None


def pretrained_path(value: str) -> epath.Path:
    """config.pretrained.path (not a registered name) as an epath: a local path made absolute,
    a gs:// (s3://, az://) URL kept as is; another URL refused, naming the key and the
    registered names."""
    try:
        return paths.path(value, "config.pretrained.path")
    except ValueError as e:
        raise ValueError(f"{e} Or give a registered name ({', '.join(hub.WEIGHTS)}).") from None


def validate_pretrained(config: ml_collections.ConfigDict) -> None:
    """config.pretrained.path: a registered name of weights for config.model.name's
    architecture, a local path or a storage URL (gs://); no other URL."""
    value = config.pretrained.path
    weights = published_weights(value)
    if weights is None:
        pretrained_path(value)
        return
    if weights.arch != config.model.name:
        raise ValueError(
            f"config.pretrained.path={value!r}: {weights.arch} weights ({weights.what}), but "
            f"config.model.name={config.model.name!r}."
        )
    if config.data.get("normalize") != weights.normalize:
        logging.warning(
            "config.pretrained.path=%r was trained on inputs normalized %r; "
            "config.data.normalize=%r.",
            value,
            weights.normalize,
            config.data.get("normalize"),
        )


def pretrained_checkpoint(path: str | os.PathLike) -> epath.Path:
    """The checkpoint a config.pretrained.path directory (local or gs://) names (its latest
    step); a FileNotFoundError naming the key and the expected layout if there is none."""
    try:
        return paths.latest_step_dir(pretrained_path(os.fspath(path)))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config.pretrained.path: no pretrained checkpoint at {path} "
            "(expected an Orbax run directory with checkpoints/<step>)."
        ) from None
