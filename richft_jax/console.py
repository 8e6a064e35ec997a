"""The console a person reads during a run: the config in a line or two, one progress line per
log interval, one line per evaluation round, a short summary at the end.

Every metric still goes to the workdir's TensorBoard events; clu's raw `[step] key=value`
lines, the library INFO lines and the parameter table come back with `--verbose` (or -v 1).
The lines go through absl logging and keep its prefix: time-stamped, in order with the
warnings and errors around them, and the same in a `--log_dir` file as on the console. The
end summary is one multi-line record, so its commands stand on lines of their own, ready to
copy.
"""

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping

from absl import logging

from richft_jax import paths, results, timing

_VERBOSE = [False]
_PREFIX = [""]
# Train values shown only once they have changed during the run (schedules): label, key.
_VARYING = (("lr", "learning_rate"), ("dropout", "dropout_rate"))
# The config's key values, for the run's first line: label, dotted key.
_CONFIG_KEYS = (
    ("method", "method"),
    ("dropout", "dropout_rate"),
    ("model", "model.name"),
    ("dataset", "data.name"),
    ("test domains", "data.test_domains"),
    ("steps", "num_steps"),
    ("batch/domain", "data.batch_size_per_domain"),
    ("lr", "optim.lr"),
    ("seed", "seed"),
)


def set_verbose(on: bool) -> None:
    """Turns the verbose console (`--verbose`) on or off for this process."""
    _VERBOSE[0] = bool(on)


def verbose() -> bool:
    """Whether raw metric lines and the parameter table go to the console (--verbose, -v 1)."""
    return _VERBOSE[0] or logging.vlog_is_on(1)


@contextlib.contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Every console line of the block starts with `prefix` (a nested run, e.g. pretraining)."""
    outer = _PREFIX[0]
    _PREFIX[0] = outer + prefix
    try:
        yield
    finally:
        _PREFIX[0] = outer


def nested() -> bool:
    """Whether the lines now printed belong to a nested run (see `prefixed`)."""
    return bool(_PREFIX[0])


def info(text: str) -> None:
    """Logs `text` (one record, possibly several lines) with the current prefix."""
    logging.info("%s%s", _PREFIX[0], text)


# absl's prefix names the caller of `info` (train.py:NN), not this file.
logging.ABSLLogger.register_frame_to_skip(__file__, "info")


def duration(seconds: float) -> str:
    """`45s`, `1m25s`, `2h03m`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def percent(fraction: float) -> str:
    """`94.3%`, or `n/a` for NaN (no rows of that kind)."""
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.1f}%"


def _get(config: Mapping, dotted: str):
    """`config[a][b]` for "a.b", or None where a key is missing."""
    value = config
    for key in dotted.split("."):
        if not isinstance(value, Mapping) and not hasattr(value, "get"):
            return None
        value = value.get(key)
        if value is None:
            return None
    return value


def config_line(config: Mapping, workdir: str) -> str:
    """The run's config in one line: its name, the key values and the workdir."""
    parts = []
    for label, key in _CONFIG_KEYS:
        value = _get(config, key)
        if value is None or value == "":
            continue
        if isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        parts.append(f"{label} {value}")
    name = config.get("config_name", "") or "config"
    return f"{name}: {', '.join(parts)} -> {workdir}"


class Progress:
    """One console line per log interval: step, loss, train accuracy, steps/s over the interval
    and the ETA."""

    def __init__(self, num_steps: int, start_step: int):
        self.num_steps = num_steps
        self.last_step, self.last_time = start_step, time.monotonic()
        self.since: tuple[int, float] | None = None  # The first line's (step, time).
        self.first: dict[str, float] = {}
        self.varying: set[str] = set()

    def line(self, step: int, train: Mapping[str, float]) -> str:
        """The line for `step` with the interval's train metrics (loss, accuracy, rates)."""
        now = time.monotonic()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        # ETA at the mean pace since the first line (evaluations included, compilation not).
        pace = rate
        if self.since is None:
            self.since = (step, now)
        elif step > self.since[0]:
            pace = (step - self.since[0]) / max(now - self.since[1], 1e-9)
        eta = (self.num_steps - step) / pace if pace > 0 else float("nan")
        text = f"step {step}/{self.num_steps}"
        if "loss" in train:
            text += f"  loss {train['loss']:.3g}"
        if "accuracy" in train:
            text += f"  train acc {percent(train['accuracy'])}"
        for label, key in _VARYING:
            if key in train:
                self.first.setdefault(key, train[key])
                if train[key] != self.first[key]:
                    self.varying.add(key)
                if key in self.varying:
                    text += f"  {label} {train[key]:.3g}"
        text += f"  {rate:.1f} steps/s"
        if step < self.num_steps and not math.isnan(eta):
            text += f"  ETA {duration(eta)}"
        return text


def eval_line(step: int, rows: list[dict], method: str) -> str:
    """`eval step 450: ID 94.3%  OOD 52.1%`, the run's method first, then any other rows'
    methods (e.g. the moving average) on the same line; ID/OOD as `results.id_ood` says."""
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != method, m))
    parts = []
    for m in methods:
        acc = results.id_ood(r for r in rows if r["method"] == m)
        label = "" if m == method else f"{m}: "
        parts.append(f"{label}ID {percent(acc['id'])}  OOD {percent(acc['ood'])}")
    return f"eval step {step}: " + "  |  ".join(parts)


def summary_lines(summary: Mapping, workdir: str | os.PathLike) -> list[str]:
    """The end of a run: what ran, the selected step's ID and OOD accuracy, the wall time, the
    workdir and the commands that read it (a gs:// workdir printed as the URL it is)."""
    workdir = os.fspath(workdir)
    rows = results.ROUNDS + "/" if paths.is_remote(workdir) else results.RESULTS
    selected = summary["selected"]
    wall = summary.get("wall_time_s")
    took = f" in {duration(wall)}" if wall is not None else ""
    timings = summary.get("timings_s")
    time_line = [f"  {timing.breakdown_line(timings, ('train_steps',))}"] if timings else []
    return [
        f"Done{took}: {summary['method']} on {summary['dataset']}, test domains "
        f"{','.join(summary['test_domains'])}.",
        f"  selected step {selected['step']} (training-domain validation): "
        f"ID {percent(selected['id_accuracy'])}  OOD {percent(selected['ood_accuracy'])}",
        *time_line,
        f"  workdir {workdir} (summary.json, {rows}, parameters.txt, TensorBoard events)",
        f"  python -m richft_jax.report {workdir}",
        f"  tensorboard --logdir {workdir}",
    ]
