"""Orbax checkpoints: periodic saves for resume, the selected (best) step, pretrained loads.

A checkpoint holds the whole train state (params, BatchNorm statistics, optimizer
state, step, root PRNG key) plus JSON metadata. The data-iterator position is the
step itself (batches are a pure function of seed and step), so restoring the state
restores the data order and every dropout mask.
"""

import os
import signal
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from richft_jax import paths
from richft_jax.paths import latest_step_dir

LATEST = paths.CHECKPOINTS  # Periodic saves; paths.latest_step_dir finds their latest.
BEST = "best"
# Fault injection for the preemption tests: "checkpoints:6" SIGKILLs the process while the
# save of step 6 into checkpoints/ is being written (after Orbax made its temporary directory,
# before the rename that commits it).
KILL_IN_SAVE_ENV = "RICHFT_FAULT_KILL_IN_SAVE"


def manager(directory: str | os.PathLike, keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager keeping the `keep` most recent steps (async saves).

    Orbax writes each step into a temporary directory and renames it when complete, so a
    killed write never looks finished (on a bucket, where renames are copies, a step counts once
    Orbax's commit marker is written); `cleanup_tmp_directories` removes such leftovers.
    `directory`: a local path (made absolute, as Orbax requires) or a gs:// URL, as is.

    Its name prefixes the manager's cross-process barrier keys: Orbax keys them by step alone,
    so the periodic and the best-step managers saving the same step on several hosts met at one
    barrier ("Barrier _async_write_complete.3 is already ongoing"), and the hosts aborted.
    """
    use_replica_parallel(jax.process_count() > 1)
    directory = paths.path(directory, "checkpoint directory")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=directory.name
        ),
    )
    return ocp.CheckpointManager(directory, options=options)


def use_replica_parallel(on: bool) -> None:
    """Whether Orbax splits a replicated array's write among its replicas: across hosts each
    writes a part; within one process it only slices every array (a compiled slice per shape:
    3.4 s of a tiny 8-device run's first save), so it is off there."""
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=on)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict | None = None) -> None:
    """Saves the state (and JSON metadata) at `step`; returns before the write finishes.

    A step already there was written by a killed run past the step it resumed from (e.g. a
    best/ checkpoint): it is replaced, since the resumed run recomputes that step exactly.
    """
    if step in mngr.all_steps():
        logging.info(
            "Replacing step %d in %s (saved before the run was interrupted).", step, mngr.directory
        )
        mngr.delete(step)
    args = {"state": ocp.args.StandardSave(state)}
    if meta is not None:
        args["meta"] = ocp.args.JsonSave(meta)
    mngr.save(step, args=ocp.args.Composite(**args), force=True)
    _maybe_kill_during_save(epath.Path(mngr.directory), step)


def _maybe_kill_during_save(directory: epath.Path, step: int) -> None:
    """Test hook (KILL_IN_SAVE_ENV): SIGKILL once the uncommitted temporary directory exists."""
    if os.environ.get(KILL_IN_SAVE_ENV) != f"{directory.name}:{step}":
        return
    for _ in range(1000):
        if any(p.name.startswith(f"{step}{paths.ORBAX_TMP}") for p in directory.iterdir()):
            break
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, dict] | None:
    """Restores the latest step into the shapes/shardings of `target`, or None if none."""
    step = mngr.latest_step()
    if step is None:
        return None
    step_dir = epath.Path(mngr.directory) / str(step)
    with ocp.PyTreeCheckpointer() as ckptr:
        saved = ckptr.metadata(step_dir / "state").item_metadata.tree
    for name in ("params", "batch_stats"):
        problem = tree_mismatch(getattr(target, name), saved.get(name) or {}, name)
        if problem:
            raise ValueError(
                f"Cannot resume from {step_dir}: it holds another model ({problem}). Use a new "
                "--workdir, or delete that run's checkpoints to start over."
            )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    try:
        restored = mngr.restore(step, args=args)
    except ValueError as e:
        if "do not match" not in str(e):
            raise
        raise ValueError(
            f"Cannot resume from {step_dir}: its train state has another structure than this "
            "run's (the paths below): the optimizer state of another config.optim, or of "
            "richft_jax before the learning rate became the train step's argument (its state "
            "counted updates), or the methods' state of another method config. Finish it with "
            f"the code and config that started it, or use a new --workdir. Orbax: {e}"
        ) from None
    return restored["state"], dict(restored["meta"] or {})


def tree_mismatch(expected: Any, saved: Any, path: str) -> str | None:
    """The first parameter path where two nested dicts differ in keys or shapes, described
    with both shapes; None when they match."""
    if isinstance(expected, dict) != isinstance(saved, dict):
        return f"{path!r} is a subtree in one and an array in the other"
    if not isinstance(expected, dict):
        if tuple(expected.shape) != tuple(saved.shape):
            return (
                f"parameter {path!r} has shape {tuple(saved.shape)} in the checkpoint, the "
                f"model expects {tuple(expected.shape)}"
            )
        return None
    for key in sorted(set(expected) | set(saved)):
        sub = f"{path}/{key}"
        if key not in saved or key not in expected:
            where = "the checkpoint" if key not in saved else "the model"
            return f"parameter {sub!r} is missing from {where}"
        problem = tree_mismatch(expected[key], saved[key], sub)
        if problem:
            return problem
    return None


def restore_state_tree(directory: str | os.PathLike) -> dict:
    """Restores a saved train state as plain nested dicts of numpy arrays (no target needed),
    on the host: a checkpoint from any topology loads anywhere."""
    # Absolute (paths.path): Orbax's metadata reader silently returns None for a relative path.
    step_dir = latest_step_dir(paths.path(directory, "checkpoint directory"))
    with ocp.PyTreeCheckpointer() as ckptr:
        metadata = ckptr.metadata(step_dir / "state").item_metadata
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree
        )
        tree = ckptr.restore(
            step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    logging.info("Restored %s", step_dir)
    return tree


def merge_pretrained(init: dict, pretrained: dict, source: str, prefix: str = "") -> dict:
    """Returns `init` with every leaf replaced by the same path of `pretrained`.

    Strict: a leaf missing from `pretrained` or with another shape is an error naming
    the file, the parameter path and both shapes (big_vision's strict merge).
    """
    out = {}
    for key, value in init.items():
        path = f"{prefix}/{key}" if prefix else key
        if key not in pretrained:
            raise ValueError(
                f"Pretrained checkpoint {source}: parameter {path!r} is missing "
                f"(it has {sorted(pretrained)} at this level)."
            )
        if isinstance(value, dict):
            if not isinstance(pretrained[key], dict):
                raise ValueError(f"Pretrained checkpoint {source}: {path!r} is not a subtree.")
            out[key] = merge_pretrained(value, pretrained[key], source, path)
        else:
            got = np.asarray(pretrained[key])
            if got.shape != value.shape:
                raise ValueError(
                    f"Pretrained checkpoint {source}: parameter {path!r} has shape {got.shape}, "
                    f"the model expects {tuple(value.shape)}."
                )
            out[key] = got.astype(value.dtype)
    return out
