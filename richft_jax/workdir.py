"""The run's directory: creation, the resolved config, an exclusive lock, preemption, prefetch.

Everything here is about the process around the loop, not the model: a workdir that is refused
early and clearly when it cannot be written, one run at a time per workdir, SIGTERM turned into
a checkpoint-and-exit, and batches moved to the devices ahead of the step.
"""

import collections
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import signal
import threading
from collections.abc import Iterable, Iterator

import jax
import ml_collections

from richft_jax import parallel, results


def url_refused(workdir: str) -> str:
    """Why a URL (gs://...) is refused as a workdir, and what to do instead."""
    return (
        f"workdir {workdir!r}: results, the workdir lock and checkpoints go through the file "
        "system; mount the bucket (e.g. gcsfuse, as launch/tpu_pod.sh does) and pass its path."
    )


def unwritable(workdir: str) -> str | None:
    """Why `make_workdir(workdir)` would fail, or None; only looks (nothing is created): the
    workdir, or else its nearest existing ancestor, must be a directory this process can
    write into, on a file system mounted read-write."""
    if "://" in workdir:
        return url_refused(workdir)
    path = pathlib.Path(workdir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))
    if not existing.is_dir():
        why = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        why = f"{existing}: {os.strerror(errno.EROFS if read_only else errno.EACCES)}"
    else:
        return None
    return f"workdir {str(pathlib.Path(workdir).expanduser())!r} is not writable: {why}"


def make_workdir(workdir: str) -> pathlib.Path:
    """Creates the workdir; a clear error naming it if that is impossible."""
    if "://" in workdir:
        raise ValueError(url_refused(workdir))
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
