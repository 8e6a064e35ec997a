"""Checkpoint writes of replicated state in one process: no per-array slicing (Orbax's
replica-parallel writes are for several hosts), and what is written restores exactly."""

import logging

import jax
import jax.numpy as jnp
import numpy as np

from richft_jax import checkpoints, parallel


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
