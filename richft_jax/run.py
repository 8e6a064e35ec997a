"""The one run builder: a run's data, model and θ0 from its config, and a finished run from its
workdir.

train, combine, every analysis, the benchmark and the notebook get "the run" from here, so
they all see the same images (size, holdout fraction, label noise), the same model and the
same starting point; nothing else re-assembles config pieces.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from richft_jax import checkpoints, evaluation, parallel, paths
from richft_jax.data import pipeline
from richft_jax.methods import hooks as hooks_lib
from richft_jax.models import hub, registry
from richft_jax.models import pretrained as published

CHOICES = {
    "data.augment": ("none", "crop", "flip_crop", "domainbed"),
    "data.normalize": ("minus_one_one", "imagenet"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("step", "cosine", "constant"),
}


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the config key, on values the loop would only trip on later."""
    if errors := config_errors(config):
        raise errors[0]


def config_errors(config: ml_collections.ConfigDict) -> list[ValueError]:
    """Every error of `validate_config`, in its order, not only the first (the preflight
    reports them all at once)."""
    errors = []
    choices = {**CHOICES, "model.name": tuple(registry.BACKBONES)}
    for key, valid in choices.items():
        section, name = key.split(".")
        value = config[section][name]
        if value not in valid:
            errors.append(ValueError(f"config.{key}={value!r} is not one of {valid}."))
    checks = [validate_pretrained] if config.pretrained.get("path") else []
    if config.model.name in registry.BACKBONES:  # The methods' checks look the backbone up.
        checks.insert(0, hooks_lib.validate)
    for check in checks:
        try:
            check(config)
        except ValueError as e:
            errors.append(e)
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] <= 0:
            errors.append(ValueError(f"config.{key}={config[key]} must be positive."))
    return errors


def load_data(config: ml_collections.ConfigDict, data_dir: str | None = None):
    """The run's domains, split in/out by its trial seed, at its image size, with its methods'
    data transforms (e.g. label noise) applied. `data_dir` overrides config.data.data_dir."""
    c = config.data
    data = pipeline.load_domains(
        c.name,
        c.test_domains,
        config.trial_seed,
        c.get("holdout_fraction", 0.2),
        data_dir=data_dir or c.data_dir,
        image_size=c.get("image_size"),
        manual_dir=c.get("manual_dir"),
        skip_unreadable=c.get("skip_unreadable", False),
    )
    return hooks_lib.build(config).transform_data(data)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The classifier (backbone + feature dropout + linear head) of `config.model`."""
    return registry.build_classifier(config.model, num_classes)


def keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
    """(init key, root key of the train state), both from config.seed."""
    init_key, root = jax.random.split(jax.random.PRNGKey(config.seed))
    return init_key, root


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


def resolve_pretrained(config: ml_collections.ConfigDict) -> epath.Path | None:
    """config.pretrained.path as an epath (local, or gs:// as given). A registered name is
    fetched (downloaded once into the cache, models/hub.py) and its file's sha256 and source
    recorded as config.pretrained.sha256 / .source, which the run writes to its config.json."""
    value = config.pretrained.get("path")
    if not value:
        return None
    if published_weights(value) is None:
        return pretrained_path(value)
    info = hub.provenance(value)
    with config.unlocked():
        config.pretrained.sha256 = info["sha256"]
        config.pretrained.source = info["source"]
    return epath.Path(info["path"])


def load_pretrained(config: ml_collections.ConfigDict, params: dict, batch_stats: dict):
    """`params`, `batch_stats` with the backbone from config.pretrained.path (a registered
    name, published weights .npz / .safetensors or an Orbax run directory); unchanged when no
    path is set."""
    path = resolve_pretrained(config)
    if path is None:
        return params, batch_stats
    if path.is_file() or config.model.name in published.NAMES:
        # Published weights or their converted Orbax checkpoint: read directly, ViT position
        # embeddings resized to the input size, strict merge.
        return published.load_backbone(config.model.name, path, params, batch_stats)
    source = str(pretrained_checkpoint(path))
    tree = checkpoints.restore_state_tree(path)
    params = {
        **params,
        "backbone": checkpoints.merge_pretrained(
            params["backbone"], tree["params"].get("backbone", {}), source, "params/backbone"
        ),
    }
    if batch_stats:
        batch_stats = {
            **batch_stats,
            "backbone": checkpoints.merge_pretrained(
                batch_stats["backbone"],
                tree["batch_stats"].get("backbone", {}),
                source,
                "batch_stats/backbone",
            ),
        }
    logging.info("Loaded the pretrained backbone from %s.", source)
    return params, batch_stats


def pretrained_checkpoint(path: str | os.PathLike) -> epath.Path:
    """The checkpoint a config.pretrained.path directory (local or gs://) names (its latest
    step); a FileNotFoundError naming the key and the expected layout if there is none."""
    try:
        return epath.Path(checkpoints.latest_step_dir(pretrained_path(os.fspath(path))))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config.pretrained.path: no pretrained checkpoint at {path} "
            "(expected an Orbax run directory with checkpoints/<step>)."
        ) from None


def init_variables(
    config: ml_collections.ConfigDict, model, data: pipeline.DomainData, mesh=None
) -> dict:
    """θ0: the pretrained backbone with the run's own initial head (the model's init with the
    run's init key, then the methods' changes, e.g. LP-FT's linear-probe head)."""
    init_key, _ = keys(config)
    image_shape = data.splits[0].images.shape[1:]
    variables = jax.jit(
        lambda k: model.init(k, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    )(init_key)
    params, batch_stats = load_pretrained(
        config, variables["params"], variables.get("batch_stats", {})
    )
    hooks = hooks_lib.build(config, model, image_shape)
    if any(m.prepare_params for m in hooks.methods):
        ctx = evaluation.Context(config, model, data, mesh or parallel.make_mesh())
        params = hooks.prepare_params(ctx, params, batch_stats)
    return {"params": params, "batch_stats": batch_stats}


@dataclasses.dataclass
class Run:
    """A finished (or checkpointed) run: its config, data, model and restored variables."""

    path: epath.Path  # The run directory, local (absolute) or gs:// as given.
    config: ml_collections.ConfigDict
    data: pipeline.DomainData
    model: Any
    variables: dict  # {"params", "batch_stats"} of the restored checkpoint.
    step: int


def read_config(run_dir: str | os.PathLike) -> ml_collections.ConfigDict:
    """A run's resolved config (RUN/config.json, local or gs://), with a clear error if it has
    none."""
    config_file = paths.path(run_dir, "run directory") / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.json (not a run directory).")
    return ml_collections.ConfigDict(json.loads(config_file.read_text(encoding="utf-8")))


def checkpoint_dirs(path: str | os.PathLike, which: str = "best") -> tuple[epath.Path, epath.Path]:
    """(run directory, step directory) of `restore(path, which)`: absolute when local, a
    gs:// URL kept as given (Orbax reads both); a FileNotFoundError when there is no finished
    checkpoint."""
    path = paths.path(path, "run directory")
    if (path / "state").is_dir():
        return path.parent.parent, path
    sub = {"best": checkpoints.BEST, "latest": checkpoints.LATEST}.get(which)
    if sub is None:
        raise ValueError(f"which={which!r} is not 'best' or 'latest'.")
    return path, epath.Path(checkpoints.latest_step_dir(path / sub))


def restore(
    path: str | os.PathLike, which: str = "best"
) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(config, {"params", "batch_stats"}, step) of a run's best or latest checkpoint, or of one
    step directory (RUN/checkpoints/STEP: ensembles and averages along one run)."""
    run_dir, step_dir = checkpoint_dirs(path, which)
    config = read_config(run_dir)
    tree = checkpoints.restore_state_tree(step_dir)
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    return config, variables, int(step_dir.name)


def from_workdir(path: str | os.PathLike, which: str = "best", data_dir: str | None = None) -> Run:
    """A run rebuilt from its workdir (local or gs://): config.json, the same data and model,
    restored variables."""
    run_dir, _ = checkpoint_dirs(path, which)
    config, variables, step = restore(path, which)
    data = load_data(config, data_dir)
    model = build_model(config, data.num_classes)
    return Run(run_dir, config, data, model, variables, step)
