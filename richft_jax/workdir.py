"""The run's directory: creation, the resolved config, an exclusive lock, preemption, prefetch.

Everything here is about the process around the loop, not the model: a workdir (a local folder
or a gs:// URL, through `paths`) that is refused early and clearly when it cannot be written,
one run at a time per workdir, SIGTERM turned into a checkpoint-and-exit, and batches moved to
the devices ahead of the step.
"""

import collections
import contextlib
import fcntl
import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator

import jax
import ml_collections
from etils import epath

from richft_jax import lease as lease_lib
from richft_jax import parallel, paths, results


def unwritable(workdir: str) -> str | None:
    """Why `make_workdir(workdir)` would fail, or None; only looks (`paths.unwritable`)."""
    return paths.unwritable(workdir)


def make_workdir(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as an epath, created on a local disk (with its parents); a bucket has no
    folders to create, and a URL never becomes a local folder. A clear error naming it if it
    cannot be created."""
    path = paths.path(workdir, "--workdir")
    if paths.is_remote(path):
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"workdir {str(path)!r} is not writable: {e}") from e
    return path


def write_config(path: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved config as workdir/config.json (process 0)."""
    path = paths.path(path, "--workdir")
    try:
        if jax.process_index() == 0:
            results.write_json_atomic(
                path / "config.json", json.loads(config.to_json_best_effort())
            )
    except OSError as e:
        raise OSError(f"workdir {str(path)!r} is not writable: {e}") from e


def prepare_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> epath.Path:
    """Creates the workdir and writes the resolved config; a clear error if it can't."""
    path = make_workdir(workdir)
    write_config(path, config)
    return path


@contextlib.contextmanager
def exclusive_workdir(path: str | os.PathLike, use_lease: bool | None = None) -> Iterator[None]:
    """One run at a time per workdir (process 0 takes it), so a second run on the same workdir
    is refused instead of interleaving checkpoints and results: an flock on workdir/.lock on a
    local disk, a heartbeat lease object (`lease.Lease`) on a bucket, which has no locks;
    `use_lease` forces either."""
    if jax.process_index() != 0:
        yield
        return
    path = paths.path(path, "--workdir")
    use_lease = paths.is_remote(path) if use_lease is None else use_lease
    if use_lease:
        with lease_lib.Lease(path / lease_lib.LEASE):
            yield
    else:
        with _flock(path):
            yield


@contextlib.contextmanager
def _flock(path: epath.Path) -> Iterator[None]:
    """Holds an flock on workdir/.lock: the OS releases it when the process ends, even on
    SIGKILL, so a crashed run never blocks its rerun."""
    try:
        lock = open(path / ".lock", "a+")  # noqa: SIM115 (held until the run ends)
    except OSError as e:
        raise OSError(f"workdir {str(path)!r} is not writable: {e}") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise lease_lib.WorkdirInUse(
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
