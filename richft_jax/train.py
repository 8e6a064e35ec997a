"""The one train loop: data -> model -> pure jitted data-parallel step -> eval -> checkpoints.

Read top to bottom in phases (big_vision style). Methods plug in as functions (the
rate passed to the step, the loss, the optimizer), never as forks of this loop.
"""

import collections
import contextlib
import fcntl
import functools
import inspect
import json
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, metrics, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from richft_jax import checkpoints, config_lib, parallel, results
from richft_jax.analysis import feature_distortion, noise_stability
from richft_jax.data import pipeline
from richft_jax.methods import feature_dropout, label_noise, lpft, moving_average, self_labeling
from richft_jax.models import pretrained as published
from richft_jax.models import registry


# ----------------------------------------------------------------------------- state & metrics
@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a plain pytree, checkpointed whole."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # The run's root key (raw uint32[2]); per-step keys are fold_in(rng, step).
    avg_params: Any = None  # Running weight average (config.moving_average_start), else {}.
    anchor_params: Any = None  # Projection centres (config.self_labeling radii), else {}.


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("correct")
    grad_norm: metrics.Average.from_output("grad_norm")
    param_norm: metrics.LastValue.from_output("param_norm")
    learning_rate: metrics.LastValue.from_output("learning_rate")


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("correct")


# ----------------------------------------------------------------------------- optimizer
def make_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The base learning-rate schedule: step decay at fractions of training, or cosine."""
    if optim.schedule == "step":
        boundaries = {int(f * num_steps): optim.decay_factor for f in optim.decay_at}
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


def make_optimizer(
    optim: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
    """SGD with momentum and coupled weight decay (as torch), or AdamW; head lr x factor."""
    schedule = make_schedule(optim, num_steps)

    def one(factor: float) -> optax.GradientTransformation:
        lr = lambda step: schedule(step) * factor  # noqa: E731
        if optim.name == "sgd":
            return optax.chain(
                optax.add_decayed_weights(optim.weight_decay), optax.sgd(lr, optim.momentum)
            )
        if optim.name == "adamw":
            return optax.adamw(lr, weight_decay=optim.weight_decay)
        raise ValueError(f"config.optim.name: unknown optimizer {optim.name!r} (sgd | adamw).")

    return optax.multi_transform(
        {"backbone": one(1.0), "head": one(optim.head_lr_factor)}, param_labels
    )


# ----------------------------------------------------------------------------- steps
def make_train_step(
    model,
    tx,
    schedule: optax.Schedule,
    normalize: str,
    moving_average_start: int | None = None,
    label_transform: Callable | None = None,
    radii: Any = None,
):
    """Returns the pure step `(state, batch, dropout_rate) -> (state, TrainMetrics)`.

    `dropout_rate` is the feature-dropout rate, or a dict of rates from
    `feature_dropout.step_rates` ("feature" and the backbone's own, e.g. "drop_path_rate").
    Method hooks: `label_transform(logits, labels, step) -> (labels, example weights)` (self
    label-correction / reweighting) and `radii`, a tree of ball radii: after the update, params
    are projected around `state.anchor_params` (self_labeling.project).
    """

    def train_step(state: TrainState, batch: dict, dropout_rate: jax.Array | dict):
        key = jax.random.fold_in(state.rng, state.step)
        images = pipeline.normalize(batch["image"], normalize)
        rates = dict(dropout_rate) if isinstance(dropout_rate, dict) else {"feature": dropout_rate}
        dropout_rate = rates.pop("feature")

        def loss_fn(params):
            (logits, _), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                dropout_rate=dropout_rate,
                backbone_rates=rates,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            labels, weights = batch["label"], None
            if label_transform is not None:
                labels, weights = label_transform(logits, labels, state.step)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            loss = ce.mean() if weights is None else jnp.sum(weights * ce)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if radii is not None:
            params = self_labeling.project(params, state.anchor_params, radii)
        avg_params = state.avg_params
        if moving_average_start is not None:
            avg_params = moving_average.update(
                avg_params, params, state.step + 1, moving_average_start
            )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            avg_params=avg_params,
        )
        m = TrainMetrics.single_from_model_output(
            loss=loss,
            correct=(jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            learning_rate=schedule(state.step),
        )
        return new_state, m

    return train_step


def model_logits(model) -> Callable[[dict, jax.Array], jax.Array]:
    """`(variables, images) -> logits` of one model in eval mode (no dropout)."""
    return lambda variables, images: model.apply(variables, images, train=False)[0]


def make_eval_step(logits_fn: Callable[[Any, jax.Array], jax.Array], normalize: str):
    """Returns `(variables, batch) -> EvalMetrics` over the masked batch.

    `logits_fn` is one model (`model_logits`) or any combination of models, e.g. a vmapped
    ensemble over stacked variables: evaluation is the same for all of them.
    """

    def eval_step(variables, batch):
        images = pipeline.normalize(batch["image"], normalize)
        logits = logits_fn(variables, images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return EvalMetrics.single_from_model_output(loss=loss, correct=correct, mask=batch["mask"])

    return eval_step


# ----------------------------------------------------------------------------- helpers
def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the config key, on values the loop would only trip on later."""
    choices = {
        "data.augment": ("none", "crop", "flip_crop", "domainbed"),
        "data.normalize": ("minus_one_one", "imagenet"),
        "optim.name": ("sgd", "adamw"),
        "optim.schedule": ("step", "cosine", "constant"),
        "model.name": tuple(registry.BACKBONES),
    }
    if config.dropout_schedule not in feature_dropout.SCHEDULES:
        raise ValueError(
            f"config.dropout_schedule={config.dropout_schedule!r} is not one of "
            f"{feature_dropout.SCHEDULES}."
        )
    for key, valid in choices.items():
        section, name = key.split(".")
        value = config[section][name]
        if value not in valid:
            raise ValueError(f"config.{key}={value!r} is not one of {valid}.")
    if not 0.0 <= config.dropout_rate < 1.0:
        raise ValueError(f"config.dropout_rate={config.dropout_rate} must be in [0, 1).")
    backbone_call = inspect.signature(registry.BACKBONES[config.model.name].__call__).parameters
    for key in ("block_dropout_rate", "drop_path_rate"):
        if not 0.0 <= config[key] < 1.0:
            raise ValueError(f"config.{key}={config[key]} must be in [0, 1).")
        if config[key] > 0 and key not in backbone_call:
            raise ValueError(
                f"config.{key}={config[key]}: backbone {config.model.name!r} has no {key} "
                "(only backbones with dropout inside their blocks, e.g. small_vit, do)."
            )
    if config.label_noise.kind not in label_noise.KINDS:
        raise ValueError(
            f"config.label_noise.kind={config.label_noise.kind!r} is not one of "
            f"{label_noise.KINDS}."
        )
    if not 0.0 <= config.label_noise.rate <= 1.0:
        raise ValueError(f"config.label_noise.rate={config.label_noise.rate} must be in [0, 1].")
    self_labeling.validate(config.self_labeling)
    for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] <= 0:
            raise ValueError(f"config.{key}={config[key]} must be positive.")


def make_workdir(workdir: str) -> pathlib.Path:
    """Creates the workdir; a clear error naming it if that is impossible."""
    if "://" in workdir:
        raise ValueError(
            f"workdir {workdir!r}: results, the workdir lock and checkpoints go through the file "
            "system; mount the bucket (e.g. gcsfuse, as launch/tpu_pod.sh does) and pass its path."
        )
    path = pathlib.Path(workdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"workdir {str(path)!r} is not writable: {e}") from e
    return path


def write_config(path: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved config as workdir/config.json (process 0)."""
    try:
        if jax.process_index() == 0:
            results.write_json_atomic(
                path / "config.json", json.loads(config.to_json_best_effort())
            )
    except OSError as e:
        raise OSError(f"workdir {str(path)!r} is not writable: {e}") from e


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> pathlib.Path:
    """Creates the workdir and writes the resolved config; a clear error if it can't."""
    path = make_workdir(workdir)
    write_config(path, config)
    return path


@contextlib.contextmanager
def exclusive_workdir(path: pathlib.Path) -> Iterator[None]:
    """Holds an flock on workdir/.lock for the whole run, so a second run started on the same
    workdir is refused instead of interleaving checkpoints and results. The OS releases the
    lock when the process ends, even on SIGKILL, so a crashed run never blocks its rerun."""
    if jax.process_index() != 0:
        yield
        return
    try:
        lock = open(path / ".lock", "a+")  # noqa: SIM115 (held until the run ends)
    except OSError as e:
        raise OSError(f"workdir {str(path)!r} is not writable: {e}") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f"workdir {str(path)!r} is in use by another run (it holds {path / '.lock'}); "
            "wait for it to finish or choose another --workdir."
        ) from None
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@contextlib.contextmanager
def preemption_notice() -> Iterator[threading.Event]:
    """Turns SIGTERM (a preemption notice on TPU pods and SLURM) into an event the loop checks
    at step boundaries: it then saves a checkpoint and returns, and a rerun resumes."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event  # Signal handlers can only be installed from the main thread.
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def prefetch_to_device(batches: Iterable[dict], size: int, mesh) -> Iterator[dict]:
    """Keeps `size` batches on the devices ahead of the step, so transfers overlap compute."""
    queue = collections.deque()
    for batch in batches:
        queue.append(parallel.global_batch(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def load_pretrained(config: ml_collections.ConfigDict, params: dict, batch_stats: dict):
    """Loads the backbone (params and BatchNorm statistics) from config.pretrained.path.

    If nothing is there and config.pretrained.pretrain_config names a config, the backbone is
    pretrained first with that config into that path (the embedded demo's first run).
    """
    path = config.pretrained.path
    if not path:
        return params, batch_stats
    path = pathlib.Path(path).expanduser()
    if path.is_file() or config.model.name in published.NAMES:
        # Published weights (.npz / .safetensors) or their converted Orbax checkpoint: read
        # directly, ViT position embeddings resized to the input size, strict merge.
        return published.load_backbone(config.model.name, path, params, batch_stats)
    try:
        checkpoints.latest_step_dir(path)
    except FileNotFoundError:
        if not config.pretrained.pretrain_config:
            raise FileNotFoundError(
                f"config.pretrained.path: no pretrained checkpoint at {path} "
                "(expected an Orbax run directory with checkpoints/<step>)."
            ) from None
        logging.warning(
            "Pretrained backbone not found at %s: pretraining it first with %s (once; later "
            "runs reuse it).",
            path,
            config.pretrained.pretrain_config,
        )
        pre_config = config_lib.load_config_file(config.pretrained.pretrain_config)
        pre_config.data.data_dir = config.data.data_dir
        train_and_evaluate(pre_config, str(path))
    tree = checkpoints.restore_state_tree(path)
    source = str(checkpoints.latest_step_dir(path))
    params = dict(params)
    params["backbone"] = checkpoints.merge_pretrained(
        params["backbone"], tree["params"].get("backbone", {}), source, "params/backbone"
    )
    if batch_stats:
        batch_stats = dict(batch_stats)
        batch_stats["backbone"] = checkpoints.merge_pretrained(
            batch_stats["backbone"],
            tree["batch_stats"].get("backbone", {}),
            source,
            "batch_stats/backbone",
        )
    logging.info("Loaded the pretrained backbone from %s.", source)
    return params, batch_stats


def linear_probe_head(model, params, batch_stats, data, config, mesh) -> dict:
    """LP-FT's head: logistic regression on the frozen features of the training domains' in
    splits, its L2 strength chosen on their out splits (ID validation)."""
    # Each host feeds its share of the batch; the features come back whole on every host.
    features_of = jax.jit(
        lambda v, x: model.apply(v, pipeline.normalize(x, config.data.normalize), train=False)[1][
            "features"
        ],
        out_shardings=parallel.replicated(mesh),
    )
    variables = {"params": params, "batch_stats": batch_stats}

    def extract(split_name):
        feats, labels = [], []
        for domain in data.train_domains:
            split = data.get(domain, split_name)
            for batch in pipeline.eval_batches(split, config.data.eval_batch_size):
                images = parallel.global_batch(parallel.host_slice(batch), mesh)["image"]
                f = np.asarray(features_of(variables, images))
                feats.append(f[batch["mask"]])
                labels.append(batch["label"][batch["mask"]])
        return np.concatenate(feats), np.concatenate(labels)

    (xt, yt), (xv, yv) = extract("in"), extract("out")
    probe = lpft.linear_probe(xt, yt, xv, yv, data.num_classes)
    logging.info(
        "Linear probe: C=%g, ID validation accuracy %.4f (grid %s).",
        probe["c"],
        probe["val_accuracy"],
        probe["scores"],
    )
    return {"kernel": np.asarray(probe["kernel"]), "bias": np.asarray(probe["bias"])}


def evaluate(
    eval_step,
    variables: Any,
    data: pipeline.DomainData,
    batch_size: int,
    mesh,
    max_examples: int | None = None,
) -> list[tuple[pipeline.Split, dict]]:
    """Accuracy and loss on the in and out splits of every domain, each example once."""
    out = []
    for split in data.splits:
        batch_metrics = [
            eval_step(variables, parallel.global_batch(parallel.host_slice(batch), mesh))
            for batch in pipeline.eval_batches(split, batch_size, max_examples)
        ]
        values = {k: float(v) for k, v in merge_on_host(batch_metrics).compute().items()}
        values["count"] = min(len(split.labels), max_examples or len(split.labels))
        out.append((split, values))
    return out


def merge_on_host(step_metrics: list[metrics.Collection]) -> metrics.Collection | None:
    """Per-step (or per-batch) metrics fetched and merged in numpy, at a logging boundary.

    Merging on the devices would launch small eager computations between the in-flight
    steps. On CPU with 8 simulated devices and a loaded machine, runs doing that aborted now
    and then in XLA's in-process all-reduce (not all devices reached the rendezvous within its
    40 s limit); with the merge on the host, the same stress (4 concurrent 1,500-step runs)
    passed. It also keeps the loop free of per-step dispatches.
    """
    if not step_metrics:
        return None
    return functools.reduce(lambda a, b: a.merge(b), jax.device_get(step_metrics))


def check_finite(m: TrainMetrics | None, step: int, ckpt_dir: pathlib.Path, mngr) -> dict:
    """Computes the accumulated train metrics; stops the run on a NaN/Inf loss or gradient."""
    if m is None:
        return {}
    values = {k: float(v) for k, v in m.compute().items()}
    if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
        raise FloatingPointError(
            f"Non-finite training loss ({values['loss']}) or gradient norm "
            f"({values['grad_norm']}) before step {step}; the last good checkpoint is step "
            f"{mngr.latest_step()} in {ckpt_dir} (kept; not overwritten)."
        )
    return values


def end_of_run_measurements(config, model, pretrained: dict, state, data, mesh) -> dict:
    """The summary fields of `config.measure`: feature distortion (pretrained vs final
    backbone), distance per tensor from the pretrained weights, and noise stability."""
    final = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    normalize, batch_size = config.data.normalize, config.data.eval_batch_size
    max_examples = config.measure.max_examples
    features_jit = jax.jit(
        lambda v, x: model.apply(v, pipeline.normalize(x, normalize), train=False)[1]["features"],
        out_shardings=parallel.replicated(mesh),
    )

    def features_of(variables, batch):
        images = parallel.global_batch(parallel.host_slice(batch), mesh)["image"]
        return features_jit(variables, images)

    out = {}
    if config.measure.feature_distortion:
        out["feature_distortion"] = feature_distortion.feature_distortion(
            features_of, pretrained, final, data, batch_size, max_examples
        )
    if config.measure.layer_distances:
        anchor = self_labeling.anchor_params(pretrained["params"])
        out["layer_distances"] = self_labeling.layer_distances(final["params"], anchor)
    if config.measure.noise_stability:
        logits_fn = jax.jit(model_logits(model))
        groups = {
            "id": [s for s in data.splits if not s.is_test_domain and s.split == "out"],
            "ood": [s for s in data.splits if s.is_test_domain and s.split == "in"],
        }
        key = jax.random.PRNGKey(config.seed)
        out["noise_stability"] = {}
        for name, splits in groups.items():
            images = np.concatenate([s.images[: max_examples or None] for s in splits])
            x = pipeline.normalize(jnp.asarray(images), normalize)
            out["noise_stability"][name] = {
                f"{target}_sigma_{sigma:g}": noise_stability.noise_stability(
                    logits_fn, final, x, sigma, key, target
                )
                for target in ("input", "weights")
                for sigma in config.measure.noise_sigmas
            }
    return out


# ----------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains and evaluates one run into `workdir`; resumes if checkpoints are there.

    Returns the summary, or {"preempted": True, "step": N} when a SIGTERM stopped the run
    after saving step N.
    """
    validate_config(config)
    path = make_workdir(workdir)
    with exclusive_workdir(path), preemption_notice() as preempted:
        write_config(path, config)
        return _train_and_evaluate(config, path, preempted)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, preempted: threading.Event
) -> dict:
    is_main = jax.process_index() == 0
    start_time = time.time()

    # -- mesh and data.
    mesh = parallel.make_mesh()
    data = pipeline.load_domains(
        config.data.name,
        config.data.test_domains,
        config.trial_seed,
        config.data.holdout_fraction,
        data_dir=config.data.data_dir,
        image_size=config.data.get("image_size"),
        manual_dir=config.data.get("manual_dir"),
    )
    noise = config.label_noise
    data = label_noise.apply_label_noise(data, noise.kind, noise.rate, noise.seed)
    logging.info(
        "Data %s: train domains %s, test domains %s, %d classes.",
        data.name,
        data.train_domains,
        data.test_domains,
        data.num_classes,
    )
    global_batch = config.data.batch_size_per_domain * len(data.train_domains)
    if global_batch % mesh.devices.size or config.data.eval_batch_size % mesh.devices.size:
        raise ValueError(
            f"Global batch {global_batch} (config.data.batch_size_per_domain x training domains) "
            f"and config.data.eval_batch_size={config.data.eval_batch_size} must be multiples of "
            f"the {mesh.devices.size} devices."
        )

    # -- model, optimizer, state (created directly with its sharding).
    model = registry.build_classifier(config.model, data.num_classes)
    tx = make_optimizer(config.optim, config.num_steps)
    schedule = make_schedule(config.optim, config.num_steps)
    root = jax.random.PRNGKey(config.seed)
    init_key, root = jax.random.split(root)
    image_shape = data.splits[0].images.shape[1:]
    variables = jax.jit(
        lambda k: model.init(k, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    )(init_key)
    params, batch_stats = load_pretrained(
        config, variables["params"], variables.get("batch_stats", {})
    )
    # Host copy of the starting point, for the end-of-run measurements.
    measures = [
        k for k in ("feature_distortion", "layer_distances", "noise_stability") if config.measure[k]
    ]
    pretrained = (
        jax.device_get({"params": params, "batch_stats": batch_stats}) if measures else None
    )
    if config.lp_head:
        params = dict(params)
        params["head"] = linear_probe_head(model, params, batch_stats, data, config, mesh)
    radii = None
    if self_labeling.constrained(config.self_labeling):
        sl = config.self_labeling
        stages = self_labeling.backbone_stage_order(model, image_shape)
        radii = self_labeling.projection_radii(params, stages, sl.radius, sl.gamma, sl.head_radius)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=root,
        # A copy, not an alias: the state is donated to the step, and a buffer donated
        # twice (as params and as avg_params) crashes XLA.
        avg_params=(
            jax.tree.map(lambda x: jnp.array(x, copy=True), params)
            if config.moving_average_start is not None
            else {}
        ),
        anchor_params=self_labeling.anchor_params(params) if radii is not None else {},
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    if is_main:
        parameter_overview.log_parameter_overview(state.params)

    # -- checkpoints: resume if there is one.
    mngr = checkpoints.manager(workdir / checkpoints.LATEST, config.keep_checkpoints)
    best_mngr = checkpoints.manager(workdir / checkpoints.BEST, 1)
    restored = checkpoints.restore_latest(mngr, state)
    if restored is not None:
        state, meta = restored
        dropped = results.truncate_after(workdir, int(state.step)) if is_main else 0
        logging.info(
            "Resumed from step %d (%s); dropped %d result rows written after it.",
            int(state.step),
            meta.get("config_name", ""),
            dropped,
        )
    elif is_main and results.read_rows(workdir):
        # Rows without any checkpoint come from a run killed before its first save.
        results.truncate_after(workdir, -1)
    start_step = int(state.step)

    # -- steps, compiled once.
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    train_step = jax.jit(
        make_train_step(
            model,
            tx,
            schedule,
            config.data.normalize,
            config.moving_average_start,
            self_labeling.make_label_transform(config.self_labeling),
            radii,
        ),
        in_shardings=(rep, shard, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    eval_step = jax.jit(
        make_eval_step(model_logits(model), config.data.normalize), out_shardings=rep
    )

    # -- writers and progress.
    writer = metric_writers.create_default_writer(str(workdir), just_logging=not is_main)
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.num_steps, writer=writer, every_steps=config.log_every
    )
    meta_base = {
        "method": config.method,
        "seed": config.seed,
        "trial_seed": config.trial_seed,
        "test_domains": list(data.test_domains),
        "dropout_rate": float(config.dropout_rate),
        "config_name": config.config_name,
        "dataset": data.name,
    }

    def evaluate_and_log(step: int, weights: dict, batch_stats) -> list[dict]:
        """Evaluates each named parameter tree on every split; returns the result rows."""
        rows = []
        for method, params in weights.items():
            evals = evaluate(
                eval_step,
                {"params": params, "batch_stats": batch_stats},
                data,
                config.data.eval_batch_size,
                mesh,
                config.data.eval_max_examples,
            )
            rows += results.eval_rows(evals, step=step, **{**meta_base, "method": method})
        writer.write_scalars(
            step,
            {
                f"eval/{r['method']}/{r['domain']}_{r['split']}_accuracy": r["accuracy"]
                for r in rows
            },
        )
        return rows

    if config.lp_head and start_step == 0:
        # LP is LP-FT's step 0: the pretrained backbone with the linear-probe head.
        lp_rows = evaluate_and_log(0, {"lp": state.params}, state.batch_stats)
        if is_main:
            results.append_rows(workdir, lp_rows)

    # -- the loop.
    batches = pipeline.train_dataset(
        data,
        seed=config.seed,
        batch_size_per_domain=config.data.batch_size_per_domain,
        start_step=start_step,
        num_steps=config.num_steps,
        augment=config.data.augment,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        prefetch=config.data.prefetch,
    ).as_numpy_iterator()
    rates_of_step = feature_dropout.step_rates(
        config.dropout_schedule,
        int(config.dropout_cutoff * config.num_steps),
        {
            "feature": config.dropout_rate,
            "block_dropout_rate": config.block_dropout_rate,
            "drop_path_rate": config.drop_path_rate,
        },
    )
    pending, last_train = [], {}
    for batch in prefetch_to_device(batches, config.data.prefetch, mesh):
        rates = {k: np.float32(v) for k, v in rates_of_step(start_step).items()}
        state, m = train_step(state, batch, rates)
        pending.append(m)
        step = start_step = start_step + 1
        progress(step)
        is_last = step == config.num_steps
        if step % config.log_every == 0 or is_last:
            last_train = check_finite(
                merge_on_host(pending), step, workdir / checkpoints.LATEST, mngr
            )
            for name, rate in rates_of_step(step - 1).items():
                last_train["dropout_rate" if name == "feature" else name] = rate
            writer.write_scalars(step, {f"train/{k}": v for k, v in last_train.items()})
            pending = []
        if step % config.eval_every == 0 or is_last:
            weights = {config.method: state.params}
            if config.moving_average_start is not None and step >= config.moving_average_start:
                weights[f"{config.method}+moving_average"] = state.avg_params
            rows = evaluate_and_log(step, weights, state.batch_stats)
            if is_main:
                results.append_rows(workdir, rows)
            # Process 0 holds results.jsonl: it decides, and every host joins the Orbax save.
            selection = (
                results.select_training_domain_validation(results.read_rows(workdir), config.method)
                if is_main
                else {"selected": {"step": -1}}
            )
            if parallel.from_main_process(selection["selected"]["step"] == step):
                checkpoints.save(best_mngr, step, state, {"selected": selection["selected"]})
        stop = preempted.is_set()
        if jax.process_count() > 1:
            # Every host must stop at the same step: agree on the notice at log boundaries.
            stop = step % config.log_every == 0 and bool(
                multihost_utils.process_allgather(np.array(stop)).any()
            )
        if step % config.checkpoint_every == 0 or is_last or stop:
            check_finite(merge_on_host(pending), step, workdir / checkpoints.LATEST, mngr)
            checkpoints.save(mngr, step, state, {**meta_base, "step": step})
        if stop and not is_last:
            logging.warning(
                "SIGTERM: saved a checkpoint at step %d in %s and stopped; rerun the same "
                "command to resume.",
                step,
                workdir / checkpoints.LATEST,
            )
            break
    # Release everything that owns threads, here and in order, rather than at interpreter exit.
    del batches
    mngr.wait_until_finished()
    best_mngr.wait_until_finished()
    mngr.close()
    best_mngr.close()
    writer.close()

    if int(state.step) < config.num_steps:
        return {"preempted": True, "step": int(state.step)}
    # Every host takes part (the features are computed over the mesh); process 0 writes.
    measured = (
        end_of_run_measurements(config, model, pretrained, state, data, mesh) if measures else {}
    )
    if not is_main:
        return {"step": int(state.step), "process_index": jax.process_index()}

    # -- summary.
    rows = results.read_rows(workdir)
    selection = results.select_training_domain_validation(rows, config.method)
    summary = {
        **meta_base,
        "selection": "training_domain_validation",
        "selected": selection["selected"],
        "last": selection["last"],
        "final_train": last_train,
        "num_steps": config.num_steps,
        "wall_time_s": time.time() - start_time,
    }
    if config.moving_average_start is not None:
        ma = results.select_training_domain_validation(rows, f"{config.method}+moving_average")
        summary["moving_average"] = {"selected": ma["selected"], "last": ma["last"]}
    summary.update(measured)
    results.write_json_atomic(workdir / results.SUMMARY, summary)
    logging.info("Summary: %s", json.dumps(summary["selected"]))
    return summary
