"""The one train loop: data -> model -> pure jitted data-parallel step -> eval -> checkpoints.

Read top to bottom in phases (big_vision style). The run comes from the run builder
(`run.py`), the steps from `steps.py`, the workdir's lock and preemption from `workdir.py`,
evaluation from `evaluation.py`; methods act only through their composed hooks
(`methods/hooks.py`), so no method is named here.
"""

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview
from etils import epath
from jax.experimental import multihost_utils

from richft_jax import (
    checkpoints,
    config_lib,
    console,
    evaluation,
    parallel,
    paths,
    preflight,
    results,
    run,
    steps,
    timing,
    writers,
)
from richft_jax import schedule as schedule_lib
from richft_jax import workdir as workdir_lib
from richft_jax.data import pipeline
from richft_jax.methods import hooks as hooks_lib
from richft_jax.methods import weight_space

PARAMETERS = "parameters.txt"  # The parameter table, in every workdir.


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, startup_s: float | None = None
) -> dict:
    """Trains and evaluates one run into `workdir` (a local path or a gs:// URL); resumes if
    checkpoints are there.

    `startup_s`: seconds from the process's start to this call, recorded as timings_s's
    "startup"; only the entry point that started the process passes it (main.py), so a run
    in-process (a notebook, a test, the nested pretraining run) has no startup phase.

    Returns the summary, or {"preempted": True, "step": N} when a SIGTERM stopped the run
    after saving step N.
    """
    # Every input (config, weights, dataset, workdir) checked before anything is built,
    # downloaded or written; all problems in one error, each with its fix.
    phases = timing.Phases(startup_s)
    timing.listen_for_compiles()
    with phases("preflight"):
        preflight.run(config, workdir)
        # A registered name (e.g. "resnet50") is downloaded once, before anything is written,
        # and its file's sha256 and source recorded in config.pretrained for config.json (a
        # local file, e.g. the demo's shipped backbone: its sha256).
        run.resolve_pretrained(config)
    path = workdir_lib.make_workdir(workdir)
    with workdir_lib.exclusive_workdir(path), workdir_lib.preemption_notice() as preempted:
        workdir_lib.write_config(path, config)
        with phases("pretrain"):
            ensure_pretrained(config)
        return _train_and_evaluate(config, path, preempted, phases)


def ensure_pretrained(config: ml_collections.ConfigDict) -> None:
    """Pretrains the backbone first when config.pretrained.path (a local or gs:// checkpoint
    directory) holds no checkpoint yet and config.pretrained.pretrain_config names how (the
    embedded demo's first run); published weights and files are never pretrained."""
    path, pre = config.pretrained.path, config.pretrained.get("pretrain_config")
    if not path or not pre or run.published_weights(path):
        return
    path = paths.path(path, "config.pretrained.path")  # gs:// as is, never a local "gs:" folder.
    if path.is_file():
        return
    try:
        checkpoints.latest_step_dir(path)
    except FileNotFoundError:
        console.info(
            f"Pretraining the backbone first with {pre}, into {path} (once; later runs reuse "
            "it). Its lines start with 'pretrain | '."
        )
        pre_config = config_lib.load_config_file(pre)
        pre_config.data.data_dir = config.data.data_dir
        with console.prefixed("pretrain | "):
            train_and_evaluate(pre_config, str(path))
        console.info(f"Pretrained backbone ready in {path}; now the run itself.")


def check_finite(m, step: int, ckpt_dir: epath.Path, mngr) -> dict:
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


def setup(
    config: ml_collections.ConfigDict, mesh, workdir: epath.Path, phases: timing.Phases
) -> tuple[
    evaluation.Context,
    hooks_lib.Hooks,
    optax.GradientTransformation,
    np.ndarray,
    steps.TrainState,
    dict | None,
]:
    """(context, hooks, optimizer, each update's learning rate, replicated initial state, θ0 on
    the host or None)."""
    with phases("data"):
        data = run.load_data(config)
    console.info(
        f"Data {data.name}: train domains {', '.join(data.train_domains)}; test domains "
        f"{', '.join(data.test_domains)}; {data.num_classes} classes."
    )
    global_batch = config.data.batch_size_per_domain * len(data.train_domains)
    if global_batch % mesh.devices.size or config.data.eval_batch_size % mesh.devices.size:
        raise ValueError(
            f"Global batch {global_batch} (config.data.batch_size_per_domain x training domains) "
            f"and config.data.eval_batch_size={config.data.eval_batch_size} must be multiples of "
            f"the {mesh.devices.size} devices."
        )
    model = run.build_model(config, data.num_classes)
    ctx = evaluation.Context(config, model, data, mesh)
    hooks = hooks_lib.build(config, model, data.splits[0].images.shape[1:])
    tx = steps.make_optimizer(config.optim)
    learning_rates = steps.learning_rates(config.optim, config.num_steps)
    with phases("init"):
        theta0 = run.init_variables(config, model, data, mesh)
    params, batch_stats = theta0["params"], theta0["batch_stats"]
    # Host copy of θ0 for the end-of-run evaluators (they compare backbones; the head is new).
    pretrained = jax.device_get(theta0) if evaluation.chosen_evaluators(config) else None
    _, root = steps.keys(config)
    state = steps.create_train_state(params, batch_stats, tx, root, hooks.init_extras(params))
    state = jax.device_put(state, parallel.replicated(mesh))
    if jax.process_index() == 0:
        write_parameter_table(workdir, config.model.name, state.params)
    return ctx, hooks, tx, learning_rates, state, pretrained


def write_parameter_table(workdir: epath.Path, model_name: str, params) -> None:
    """The parameter table into workdir/parameters.txt; on the console its total, and the
    table itself when verbose."""
    table = parameter_overview.get_parameter_overview(params)
    paths.write_text_atomic(workdir / PARAMETERS, table + "\n")
    count = parameter_overview.count_parameters(params)
    console.info(f"Model {model_name}: {count:,} parameters (table: {workdir / PARAMETERS}).")
    if console.verbose():
        logging.info("Parameters:\n%s", table)


def resume(
    workdir: epath.Path, mngr, state: steps.TrainState, config: ml_collections.ConfigDict
) -> steps.TrainState:
    """The latest checkpoint's state if there is one; drops result rows written after it.

    Rows and checkpoint directories carry step labels; the state carries the updates done.
    """
    is_main = jax.process_index() == 0
    restored = checkpoints.restore_latest(mngr, state)
    if restored is not None:
        state, meta = restored
        step = schedule_lib.label(config, int(state.step))
        dropped = results.truncate_after(workdir, step) if is_main else 0
        logging.info(
            "Resumed from step %d (%d updates done; %s); dropped %d result rows written after it.",
            step,
            int(state.step),
            meta.get("config_name", ""),
            dropped,
        )
    elif is_main and results.read_rows(workdir):
        # Rows without any checkpoint come from a run killed before its first save.
        results.truncate_after(workdir, schedule_lib.label(config, 0) - 1)
    return state


def compile_steps(
    ctx: evaluation.Context, hooks: hooks_lib.Hooks, tx: optax.GradientTransformation
) -> tuple[Callable, tuple[Callable, Callable]]:
    """The train step (state donated, batch sharded over the mesh) and the eval step, jitted."""
    rep, shard = parallel.replicated(ctx.mesh), parallel.batch_sharded(ctx.mesh)
    normalize = ctx.config.data.normalize
    train_step = jax.jit(
        steps.make_train_step(ctx.model, tx, normalize, hooks.label_transform, hooks.post_update),
        in_shardings=(rep, shard, rep, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    logits = steps.model_logits(ctx.model)
    eval_step = jax.jit(steps.make_eval_step(logits, normalize), out_shardings=rep)
    per_pass = ctx.config.data.eval_models_per_pass
    models_eval_step = jax.jit(
        steps.make_models_eval_step(logits, normalize, per_pass, ctx.mesh), out_shardings=rep
    )
    return train_step, (eval_step, models_eval_step)


def make_evaluate_and_log(
    ctx: evaluation.Context, eval_steps: tuple[Callable, Callable], writer, meta: dict
) -> Callable[[int, dict, Any], list[dict]]:
    """`(step label, {row method: params}, batch_stats) -> result rows` on every split (the
    training domains' augmented if config.data.eval_augment says so), also written as scalars.
    Weights of one shape go through the data together (`evaluation.evaluate_models`)."""
    c = ctx.config
    eval_step, models_eval_step = eval_steps
    kwargs = dict(
        batch_size=c.data.eval_batch_size,
        mesh=ctx.mesh,
        max_examples=c.data.eval_max_examples,
        train_in_max=c.data.eval_train_in_max_examples,
    )

    def evaluate_and_log(step: int, weights: dict, batch_stats) -> list[dict]:
        kw = {**kwargs, "augment": evaluation.eval_augmentation(c, step)}
        names, trees = list(weights), list(weights.values())
        if len(trees) > 1 and weight_space.stackable(trees):
            stacked = {"params": weight_space.stack(trees), "batch_stats": batch_stats}
            per_model = evaluation.evaluate_models(
                models_eval_step, stacked, len(trees), ctx.data, **kw
            )
        else:
            per_model = [
                evaluation.evaluate(
                    eval_step, {"params": p, "batch_stats": batch_stats}, ctx.data, **kw
                )
                for p in trees
            ]
        rows = []
        for method, evals in zip(names, per_model, strict=True):
            rows += results.eval_rows(evals, step=step, **{**meta, "method": method})
        console.info(console.eval_line(step, rows, meta["method"]))
        writer.write_scalars(
            step,
            {
                f"eval/{r['method']}/{r['domain']}_{r['split']}_accuracy": r["accuracy"]
                for r in rows
            },
        )
        return rows

    return evaluate_and_log


def run_meta(config: ml_collections.ConfigDict, data) -> dict:
    """The fields every result row and checkpoint of the run carries."""
    return {
        "method": config.method,
        "seed": config.seed,
        "trial_seed": config.trial_seed,
        "test_domains": list(data.test_domains),
        "dropout_rate": float(config.dropout_rate),
        "config_name": config.config_name,
        "dataset": data.name,
    }


def should_stop(preempted: threading.Event, step: int, log_every: int) -> bool:
    """Whether a SIGTERM asks to stop now; every host agrees, at log boundaries."""
    stop = preempted.is_set()
    if jax.process_count() > 1:
        stop = step % log_every == 0 and bool(
            multihost_utils.process_allgather(np.array(stop)).any()
        )
    return stop


def save_best_if_selected(
    workdir: epath.Path, best_mngr, step: int, state: steps.TrainState, method: str
) -> None:
    """Process 0 holds results.jsonl: it decides, and every host joins the Orbax save."""
    is_main = jax.process_index() == 0
    selection = (
        results.select_training_domain_validation(results.read_rows(workdir), method)
        if is_main
        else {"selected": {"step": -1}}
    )
    if parallel.from_main_process(selection["selected"]["step"] == step):
        checkpoints.save(best_mngr, step, state, {"selected": selection["selected"]})


# ----------------------------------------------------------------------------- the loop
def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    preempted: threading.Event,
    phases: timing.Phases,
) -> dict:
    is_main = jax.process_index() == 0

    # -- mesh, data, model, θ0 and the train state (methods' state in state.extras).
    mesh = parallel.make_mesh()
    ctx, hooks, tx, learning_rates, state, pretrained = setup(config, mesh, workdir, phases)
    data, meta = ctx.data, run_meta(config, ctx.data)

    # -- checkpoint managers, the steps (compiled once), writers; resume if there is a checkpoint.
    with phases("setup"):
        mngr = checkpoints.manager(workdir / checkpoints.LATEST, config.keep_checkpoints)
        best_mngr = checkpoints.manager(workdir / checkpoints.BEST, 1)
        train_step, eval_steps = compile_steps(ctx, hooks, tx)
        writer = writers.make_writer(workdir, is_main)
    with phases("restore"):
        state = resume(workdir, mngr, state, config)
    start_step = int(state.step)
    progress = writers.progress(writer, config.num_steps, config.log_every)
    progress_line = console.Progress(config.num_steps, start_step)
    evaluate_and_log = make_evaluate_and_log(ctx, eval_steps, writer, meta)
    initial = hooks.initial_weights(state.params)
    if initial and start_step == 0:
        # E.g. LP, LP-FT's step 0 (-1 in "domainbed" labels: before any update).
        with phases("eval"):
            rows = evaluate_and_log(schedule_lib.label(config, 0), initial, state.batch_stats)
            if is_main:
                results.append_rows(workdir, rows)

    # -- the loop; its phases: train steps, input waits, eval, selection, checkpoints.
    batches = pipeline_batches(config, data, start_step)
    pending, last_train = [], {}
    device_batches = workdir_lib.prefetch_to_device(batches, config.data.prefetch, mesh)
    for batch in phases.timed_iter(device_batches, "input"):
        with phases("train_steps"):
            rates = {k: np.float32(v) for k, v in hooks.rates(start_step).items()}
            state, m = train_step(state, batch, rates, learning_rates[start_step])
            pending.append(m)
            step = start_step = start_step + 1
            progress(step)
            is_last = step == config.num_steps
            if step % config.log_every == 0 or is_last:
                merged = steps.merge_on_host(pending)
                last_train = check_finite(merged, step, workdir / checkpoints.LATEST, mngr)
                for name, rate in hooks.rates(step - 1).items():
                    last_train["dropout_rate" if name == "feature" else name] = rate
                writer.write_scalars(step, {f"train/{k}": v for k, v in last_train.items()})
                console.info(progress_line.line(step, last_train))
                pending = []
            label = schedule_lib.label(config, step)  # What rows and checkpoints are numbered.
            eval_now = schedule_lib.is_eval_step(config, step)
            save_now = schedule_lib.is_checkpoint_step(config, step)
            if eval_now or save_now:  # The steps' time is theirs, not the phase that waits.
                jax.block_until_ready(state)
        if eval_now:
            with phases("eval"):
                weights = hooks.eval_weights(state.params, state.extras, step)
                rows = evaluate_and_log(label, weights, state.batch_stats)
                if is_main:
                    results.append_rows(workdir, rows)
            with phases("select_and_save_best"):
                save_best_if_selected(workdir, best_mngr, label, state, config.method)
        stop = should_stop(preempted, step, config.log_every)
        if save_now or stop:
            with phases("checkpoints"):
                merged = steps.merge_on_host(pending)
                check_finite(merged, step, workdir / checkpoints.LATEST, mngr)
                checkpoints.save(mngr, label, state, {**meta, "step": label, "updates": step})
        if stop and not is_last:
            logging.warning(
                "SIGTERM: saved a checkpoint at step %d in %s and stopped; rerun the same "
                "command to resume.",
                label,
                workdir / checkpoints.LATEST,
            )
            break
    # Release everything that owns threads, here and in order, rather than at interpreter exit.
    with phases("teardown"):
        del batches
    with phases("checkpoints"):
        for m in (mngr, best_mngr):
            m.wait_until_finished()
            m.close()
    with phases("teardown"):
        writer.close()
    if int(state.step) < config.num_steps:
        return {"preempted": True, "step": schedule_lib.label(config, int(state.step))}
    final = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    # Every host takes part (the features are computed over the mesh); process 0 writes.
    with phases("end_of_run"):
        measured = {} if pretrained is None else evaluation.end_of_run(ctx, pretrained, final)
    if not is_main:
        return {"step": int(state.step), "process_index": jax.process_index()}
    return write_summary(config, workdir, hooks, meta, last_train, measured, phases)


def pipeline_batches(
    config: ml_collections.ConfigDict, data: pipeline.DomainData, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
    """The run's training batches from `start_step` on, as numpy (this host's rows)."""
    return pipeline.train_dataset(
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


def write_summary(
    config: ml_collections.ConfigDict,
    workdir: epath.Path,
    hooks: hooks_lib.Hooks,
    meta: dict,
    last_train: dict,
    measured: dict,
    phases: timing.Phases,
) -> dict:
    """summary.json: the training-domain-validation selection, the methods' and the
    evaluators' fields."""
    rows = results.read_rows(workdir)
    selection = results.select_training_domain_validation(rows, config.method)
    summary = {
        **meta,
        "selection": "training_domain_validation",
        "selected": selection["selected"],
        "last": selection["last"],
        "final_train": last_train,
        "num_steps": config.num_steps,
        "wall_time_s": time.perf_counter() - phases.start,
    }
    summary.update(hooks.summary(rows))
    summary.update(measured)
    summary["timings_s"] = phases.summary()
    results.write_json_atomic(workdir / results.SUMMARY, summary)
    lines = console.summary_lines(summary, workdir)
    console.info("\n".join(lines[:2] if console.nested() else lines))
    return summary
