"""The run's metric writers: TensorBoard events in the workdir (through epath on a bucket) and,
when verbose, clu's raw console lines. Apart from the console because clu's writers import
TensorFlow, which the console's other readers (the report, the preflight) never need."""

import os
import shutil
import tempfile
import time
from collections.abc import Mapping

from absl import logging
from etils import epath

from richft_jax import console, paths, tf_cpu

tf_cpu.tf()  # TensorFlow through its one door, before clu's writers import it.
from clu import metric_writers, periodic_actions  # noqa: E402


def make_writer(workdir: str | os.PathLike, is_main: bool) -> metric_writers.MetricWriter:
    """TensorBoard events in `workdir` (process 0 writes them; on a bucket through
    `MirroredSummaryWriter`); clu's raw console lines too, on every process, when verbose."""
    writers: list[metric_writers.MetricWriter] = []
    if console.verbose():
        writers.append(metric_writers.LoggingWriter())
    if is_main:
        if paths.is_remote(workdir):
            writers.append(MirroredSummaryWriter(paths.path(workdir, "--workdir")))
        else:
            writers.append(metric_writers.SummaryWriter(os.fspath(workdir)))
    return metric_writers.AsyncMultiWriter(writers)


def progress(
    writer: metric_writers.MetricWriter, num_steps: int, every_steps: int
) -> periodic_actions.ReportProgress:
    """clu's steps/s and ETA, written every `every_steps` steps; call it with each step."""
    return periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=every_steps
    )


class MirroredSummaryWriter(metric_writers.SummaryWriter):
    """TensorBoard events for a bucket workdir: written to a local temporary folder and copied
    to the workdir through epath on flush, on close and every `upload_every` seconds, so they
    take the one path layer (TensorFlow's own GCS client bypasses it and cannot be pointed at
    an emulator). Each copy rewrites the events object, small for scalars; a killed run loses
    at most the last interval's events (results and checkpoints are written directly)."""

    def __init__(self, target: epath.Path, upload_every: float = 60.0):
        self._staging = tempfile.mkdtemp(prefix="richft_events_")
        super().__init__(self._staging)
        self._target, self._upload_every = target, upload_every
        self._uploaded = time.monotonic()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        super().write_scalars(step, scalars)
        if time.monotonic() - self._uploaded >= self._upload_every:
            self.flush()

    def flush(self) -> None:
        super().flush()
        self._upload()

    def close(self) -> None:
        super().close()
        self._upload()
        shutil.rmtree(self._staging, ignore_errors=True)

    def _upload(self) -> None:
        """Copies every staged file to the same relative path under the target."""
        self._uploaded = time.monotonic()
        for folder, _, names in os.walk(self._staging):
            for name in names:
                local = os.path.join(folder, name)
                relative = os.path.relpath(local, self._staging)
                target = self._target / relative
                try:
                    if not paths.is_remote(target):  # A local target: tests.
                        target.parent.mkdir(parents=True, exist_ok=True)
                    with open(local, "rb") as f:
                        target.write_bytes(f.read())
                except Exception as e:  # noqa: BLE001 (events are diagnostics: the run goes on)
                    logging.warning("Could not copy TensorBoard events to %s: %s", self._target, e)
