"""The one run builder: a run's data, model and θ0 from its config, and a finished run from its
workdir.

train, combine, every analysis, the benchmark and the notebook get "the run" from here, so
they all see the same images (size, holdout fraction, label noise), the same model and the
same starting point; nothing else re-assembles config pieces. The config's checks
(validate_config, and the pretrained path's) are config_checks.py's, run before JAX is imported.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from richft_jax import checkpoints, evaluation, parallel, paths, steps
from richft_jax.config_checks import pretrained_checkpoint, pretrained_path, published_weights
from richft_jax.data import pipeline
from richft_jax.methods import hooks as hooks_lib
from richft_jax.models import hub, registry
from richft_jax.models import pretrained as published


def load_data(
    config: ml_collections.ConfigDict, data_dir: str | None = None
) -> pipeline.DomainData:
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


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> registry.Classifier:
    """The classifier (backbone + feature dropout + linear head) of `config.model`."""
    return registry.build_classifier(config.model, num_classes)


def resolve_pretrained(config: ml_collections.ConfigDict) -> epath.Path | None:
    """config.pretrained.path as an epath (local, or gs:// as given). A registered name is
    fetched (downloaded once into the cache, models/hub.py) and its file's sha256 and source
    recorded as config.pretrained.sha256 / .source, which the run writes to its config.json; a
    local file (e.g. the demo's shipped backbone, config_lib.shipped) gets its sha256 recorded."""
    value = config.pretrained.get("path")
    if not value:
        return None
    if published_weights(value) is None:
        path = pretrained_path(value)
        if not paths.is_remote(path) and path.is_file():
            with config.unlocked():
                config.pretrained.sha256 = hub.file_sha256(path)
        return path
    info = hub.provenance(value)
    with config.unlocked():
        config.pretrained.sha256 = info["sha256"]
        config.pretrained.source = info["source"]
    return epath.Path(info["path"])


def load_pretrained(
    config: ml_collections.ConfigDict, params: dict, batch_stats: dict
) -> tuple[dict, dict]:
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


def init_variables(
    config: ml_collections.ConfigDict, model, data: pipeline.DomainData, mesh=None
) -> dict:
    """θ0: the pretrained backbone with the run's own initial head (the model's init with the
    run's init key, then the methods' changes, e.g. LP-FT's linear-probe head)."""
    init_key, _ = steps.keys(config)
    image_shape = data.splits[0].images.shape[1:]
    variables = jitted_init(model, tuple(image_shape))(init_key)
    params, batch_stats = load_pretrained(
        config, variables["params"], variables.get("batch_stats", {})
    )
    hooks = hooks_lib.build(config, model, image_shape)
    if any(m.prepare_params for m in hooks.methods):
        ctx = evaluation.Context(config, model, data, mesh or parallel.make_mesh())
        params = hooks.prepare_params(ctx, params, batch_stats)
    return {"params": params, "batch_stats": batch_stats}


@steps.jit_per_model
def jitted_init(model, image_shape: tuple[int, ...]) -> Callable[[jax.Array], dict]:
    """`key -> variables` of `model` for images of `image_shape`, jitted once per process for
    each model and shape (`steps.jit_per_model`)."""
    return lambda k: model.init(k, jnp.zeros((1, *image_shape), jnp.float32), train=False)


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
