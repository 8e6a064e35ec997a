"""Data parallelism with jax.jit over a device Mesh: batch sharded, parameters replicated.

This is today's form of "pmapped" training (pmap is in maintenance mode and built on
jit(shard_map) since JAX 0.10). The same code runs on one CPU, 8 simulated CPU
devices, a GPU, or every chip of a multi-host TPU pod.
"""

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all devices of all hosts (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading axis split over the devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def per_device(fn: Callable, mesh: Mesh, out_batch_axis: int = 0) -> Callable:
    """`fn(tree, batch_array)` run on each device's share of the batch (`jax.shard_map`), `tree`
    replicated; the output's axis `out_batch_axis` is the batch's. For programs XLA's SPMD
    partitioner shards badly: K models vmapped over one batch become grouped convolutions, and
    it all-gathered the whole batch onto every device before each one (two demo ResNets on 8
    simulated CPU devices: 195 ms a batch, 34 ms per device; one model 29 ms)."""
    out = P(*([None] * out_batch_axis), DATA_AXIS)
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=out)


def host_slice(batch: dict) -> dict:
    """This host's contiguous share of a batch every host holds whole (evaluation data)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    n = len(next(iter(batch.values())))
    if n % count:
        raise ValueError(f"A batch of {n} rows cannot be split over {count} hosts.")
    share = n // count
    return {k: v[index * share : (index + 1) * share] for k, v in batch.items()}


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles each host's numpy batch into one global jax.Array sharded over the mesh."""
    sharding = batch_sharded(mesh)
    n = mesh.devices.size // jax.process_count()
    for key, value in local_batch.items():
        if value.shape[0] % n:
            raise ValueError(
                f"Batch {key!r} with {value.shape[0]} rows on this host cannot be split over "
                f"its {n} devices: make the per-host batch a multiple of the device count."
            )
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def from_main_process(flag: bool) -> bool:
    """Process 0's value of `flag` on every host: for decisions that every host must share
    (e.g. whether to join a checkpoint save) but only process 0 can make (it holds the logs)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))
