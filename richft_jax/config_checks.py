"""The config checks that need no JAX: every error `run.validate_config` finds, the evaluation
augmentation's check, and whether a local config.pretrained.path holds a finished checkpoint.

The preflight runs these before JAX, TensorFlow and the models are imported (a missing dataset
or weights file is then named in a second, not after ten). They repeat what run.py, the methods
(methods/hooks.py, label_noise.py, self_labeling.py, feature_dropout.py), evaluation.py and
checkpoints.latest_step_dir check, with the same messages, from tables of names instead of the
modules themselves; tests/test_preflight.py checks that both agree (tables and errors).
"""

import os

import ml_collections
from absl import logging
from etils import epath

from richft_jax import paths
from richft_jax.models import hub

CHOICES = {  # run.CHOICES
    "data.augment": ("none", "crop", "flip_crop", "domainbed"),
    "data.normalize": ("minus_one_one", "imagenet"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("step", "cosine", "constant"),
}
_BLOCK_RATES = ("block_dropout_rate", "drop_path_rate")
# models.registry.BACKBONES, each with the rates of its own dropout that its __call__ takes.
BACKBONE_RATES: dict[str, tuple[str, ...]] = {
    "small_resnet": (),
    "small_vit": _BLOCK_RATES,
    "vit_s16": _BLOCK_RATES,
    "vit_b16": _BLOCK_RATES,
    "vit_l16": _BLOCK_RATES,
    "resnet18": (),
    "resnet50": (),
    "resnet101": (),
}
DROPOUT_SCHEDULES = ("constant", "early", "early_linear", "late")  # feature_dropout.SCHEDULES
LABEL_NOISE_KINDS = ("none", "symmetric", "pairwise")  # label_noise.KINDS
EVAL_AUGMENT = ("none", "training_domains")  # evaluation.EVAL_AUGMENT
CHECKPOINTS = "checkpoints"  # checkpoints.LATEST: a run's checkpoint manager directory.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax: a step directory still being written.
_COMMIT_FILE = "commit_success.txt"  # Orbax on a bucket: the step directory is complete.


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the config key, on values the loop would only trip on later."""
    if errors := config_errors(config):
        raise errors[0]


def config_errors(config: ml_collections.ConfigDict) -> list[ValueError]:
    """Every error of `validate_config`, in run.config_errors' order (the preflight reports
    them all at once)."""
    errors = []
    choices = {**CHOICES, "model.name": tuple(BACKBONE_RATES)}
    for key, valid in choices.items():
        section, name = key.split(".")
        value = config[section][name]
        if value not in valid:
            errors.append(ValueError(f"config.{key}={value!r} is not one of {valid}."))
    checks = [validate_pretrained] if config.pretrained.get("path") else []
    if config.model.name in BACKBONE_RATES:  # The methods' checks look the backbone up.
        checks.insert(0, validate_methods)
    for check in checks:
        try:
            check(config)
        except ValueError as e:
            errors.append(e)
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] <= 0:
            errors.append(ValueError(f"config.{key}={config[key]} must be positive."))
    return errors


# ----------------------------------------------------------------------------- methods
def validate_methods(config: ml_collections.ConfigDict) -> None:
    """methods.hooks.validate: the dropout schedule and rates, label noise, self-labeling."""
    if config.dropout_schedule not in DROPOUT_SCHEDULES:
        raise ValueError(
            f"config.dropout_schedule={config.dropout_schedule!r} is not one of "
            f"{DROPOUT_SCHEDULES}."
        )
    if not 0.0 <= config.dropout_rate < 1.0:
        raise ValueError(f"config.dropout_rate={config.dropout_rate} must be in [0, 1).")
    for key in _BLOCK_RATES:
        if not 0.0 <= config[key] < 1.0:
            raise ValueError(f"config.{key}={config[key]} must be in [0, 1).")
        if config[key] > 0 and key not in BACKBONE_RATES[config.model.name]:
            raise ValueError(
                f"config.{key}={config[key]}: backbone {config.model.name!r} has no {key} "
                "(only backbones with dropout inside their blocks, e.g. small_vit, do)."
            )
    validate_label_noise(config)
    validate_self_labeling(config.self_labeling)


def validate_label_noise(config: ml_collections.ConfigDict) -> None:
    """methods.label_noise.validate: the `config.label_noise` key with a bad value named."""
    noise = config.label_noise
    if noise.kind not in LABEL_NOISE_KINDS:
        raise ValueError(
            f"config.label_noise.kind={noise.kind!r} is not one of {LABEL_NOISE_KINDS}."
        )
    if not 0.0 <= noise.rate <= 1.0:
        raise ValueError(f"config.label_noise.rate={noise.rate} must be in [0, 1].")


def validate_self_labeling(cfg: ml_collections.ConfigDict) -> None:
    """methods.self_labeling.validate: the `config.self_labeling` key with a bad value named."""
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


def check_eval_augment(config: ml_collections.ConfigDict) -> None:
    """evaluation.eval_augmentation's check of config.data.eval_augment."""
    kind = config.data.get("eval_augment", "none")
    if kind not in EVAL_AUGMENT:
        raise ValueError(f"config.data.eval_augment={kind!r} is not one of {EVAL_AUGMENT}.")


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


def _finished_steps(directory: epath.Path) -> list[int]:
    """The steps of the finished Orbax checkpoints in `directory` (ocp.utils.checkpoint_steps:
    step directories, not temporary ones; on a bucket, those with their commit file)."""
    remote = "://" in os.fspath(directory)
    steps = []
    for step_dir in directory.iterdir():
        name = step_dir.name
        number = name if name.isdigit() else name.split("_")[-1]
        if not (number.isdigit() and step_dir.is_dir()) or _TMP_SUFFIX in name:
            continue
        if not remote or (step_dir / _COMMIT_FILE).exists():
            steps.append(int(number))
    return steps


def pretrained_checkpoint(path: str | os.PathLike) -> epath.Path:
    """The checkpoint a config.pretrained.path directory names (its latest step, as
    checkpoints.latest_step_dir finds it); a FileNotFoundError as run.pretrained_checkpoint's
    if there is none."""
    directory = pretrained_path(os.fspath(path))
    if (directory / "state").is_dir():
        return directory
    for candidate in (directory / CHECKPOINTS, directory):
        if candidate.is_dir() and (steps := _finished_steps(candidate)):
            return candidate / str(max(steps))
    raise FileNotFoundError(
        f"config.pretrained.path: no pretrained checkpoint at {path} "
        "(expected an Orbax run directory with checkpoints/<step>)."
    )
