"""Checkpoint writes of replicated state in one process: no per-array slicing (Orbax's
replica-parallel writes are for several hosts), and what is written restores exactly."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from richft_jax import checkpoints, config_lib, parallel, steps


def test_one_process_writes_replicated_arrays_without_slicing_them(tmp_path):
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8 and jax.process_count() == 1
    shapes = [(16, 5), (8,), (3, 3, 16, 32), (64,), (24, 3)]  # Divisible among 8 replicas.
    state = {
        f"p{i}": jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) for i, s in enumerate(shapes)
    }
    state = jax.device_put(state, parallel.replicated(mesh))
    mngr = checkpoints.manager(tmp_path / "ckpt", keep=1)
    compiled = []
    handler = logging.Handler()
    handler.emit = lambda record: compiled.append(record.getMessage())
    logger = logging.getLogger("jax._src.interpreters.pxla")  # "Compiling jit(f) ..." lines.
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            checkpoints.save(mngr, 1, state, {"step": 1})
            mngr.wait_until_finished()
    finally:
        logger.removeHandler(handler)
    compiled = [m for m in compiled if m.startswith("Compiling jit(slice)")]
    assert compiled == []  # With replica-parallel writes: one compiled slice per array shape.
    mngr.close()
    restored = checkpoints.restore_state_tree(tmp_path / "ckpt")
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], np.asarray(value))


def test_resuming_with_another_optimizer_state_is_a_clear_error(tmp_path):
    """A checkpoint whose optimizer state has another structure (e.g. written before the
    learning rate became the step's argument: optax's sgd counted updates) names the step
    directory and what to do, not only Orbax's tree diff."""
    optim = config_lib.base_config().optim
    params = {"backbone": {"w": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
    counting = optax.multi_transform(
        {k: optax.sgd(steps.make_schedule(optim, 10), 0.9) for k in ("backbone", "head")},
        steps.param_labels,
    )
    old = steps.create_train_state(params, {}, counting, jax.random.PRNGKey(0))
    mngr = checkpoints.manager(tmp_path / "latest", keep=1)
    checkpoints.save(mngr, 3, old, {"step": 3})
    mngr.wait_until_finished()
    new = steps.create_train_state(params, {}, steps.make_optimizer(optim), jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError, match=r"(?s)Cannot resume from .*latest/3: its train state .*opt_state"
    ):
        checkpoints.restore_latest(mngr, new)
    mngr.close()


def test_a_runs_two_managers_sync_hosts_at_their_own_barriers(tmp_path):
    """The periodic and the best-step managers save the same step; Orbax keys its cross-host
    barriers by step, so each manager prefixes them with its directory's name (without it, two
    hosts met at one barrier and aborted: "_async_write_complete.3 is already ongoing")."""
    managers = [
        checkpoints.manager(tmp_path / checkpoints.LATEST),
        checkpoints.manager(tmp_path / checkpoints.BEST, 1),
    ]
    try:
        # Orbax has no public accessor for a manager's multiprocessing options.
        prefixes = [m._multiprocessing_options.barrier_sync_key_prefix for m in managers]
    finally:
        for m in managers:
            m.close()
    assert prefixes == [checkpoints.LATEST, checkpoints.BEST]
    assert checkpoints.LATEST != checkpoints.BEST
