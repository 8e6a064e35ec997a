"""The console a person reads: the config, one progress line per log interval, one line per
evaluation round, a short summary with the commands that read the workdir; clu's raw metric
lines, the library INFO lines and the parameter table only with --verbose (the table always in
the workdir)."""

import math
import os
import pathlib
import re
import subprocess

import pytest
from cli import demo_command

from richft_jax import config_lib, console, results, run, writers

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {"pretrained.path": ""}  # A random backbone: no pretraining needed.
PROGRESS = re.compile(
    r"\] step (\d+)/(\d+)  loss [\d.e+-]+  train acc [\d.]+%(  lr [\d.e+-]+)?  "
    r"[\d.]+ steps/s(  ETA \S+)?$"
)
EVAL = re.compile(r"\] eval step (\d+): ID ([\d.]+)%  OOD ([\d.]+)%$")
# clu's metric lines and work-unit notes, the parameter table: with --verbose only.
RAW_LINES = ("logging_writer.py", "Setting work unit notes", "Parameters:")


def run_demo(data_dir, workdir, *extra: str, **overrides) -> list[str]:
    """The tiny demo through the real CLI; its console (stdout and stderr) as lines."""
    cmd = demo_command(workdir, data_dir, *extra, overrides={**OVERRIDES, **overrides})
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def built(data_dir):
    """The session's data dir with the demo's dataset built (its build prints TFDS's bars)."""
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    run.load_data(c)
    return data_dir


@pytest.fixture(scope="module")
def default_run(built, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("console") / "run"
    return workdir, run_demo(built, workdir)


def test_default_console_is_short_and_has_no_raw_lines(default_run):
    _, lines = default_run
    text = "\n".join(lines)
    for raw in (*RAW_LINES, "xla_bridge.py"):  # JAX's backend probing too.
        assert raw not in text, raw
    # Config (2), preflight, data, model, 4 progress, 2 eval, summary (5), TF's C++ lines...
    assert len(lines) <= 30, text  # 23 when written (31 before, 14 of them clu's raw lines).


def test_one_progress_line_per_log_interval(default_run):
    _, lines = default_run
    progress = [m for m in map(PROGRESS.search, lines) if m]
    assert [int(m[1]) for m in progress] == [5, 10, 15, 20], lines  # log_every 5 of 20.
    assert all(m[2] == "20" for m in progress)
    assert all(m[4] for m in progress[:-1]) and not progress[-1][4]  # ETA until the end.


def test_one_eval_line_per_round_as_results_say(default_run):
    workdir, lines = default_run
    evals = [m for m in map(EVAL.search, lines) if m]
    assert [int(m[1]) for m in evals] == [10, 20], lines
    rows = results.read_rows(workdir)
    for m in evals:
        acc = results.id_ood(r for r in rows if r["step"] == int(m[1]))
        assert float(m[2]) == pytest.approx(100 * acc["id"], abs=0.05)
        assert float(m[3]) == pytest.approx(100 * acc["ood"], abs=0.05)


def test_summary_names_the_workdir_and_its_commands(default_run):
    workdir, lines = default_run
    done = re.compile(r"\] Done in \d+s: very_large_dropout on digits_domains")
    assert any(done.search(x) for x in lines)
    assert any(re.fullmatch(r"  selected step \d+ .*: ID [\d.]+%  OOD [\d.]+%", x) for x in lines)
    assert f"  python -m richft_jax.report {workdir}" in lines
    assert f"  tensorboard --logdir {workdir}" in lines
    table = (workdir / "parameters.txt").read_text()
    assert "| Name" in table and "backbone/" in table and "head/" in table


def test_verbose_brings_back_the_raw_lines(built, tmp_path):
    lines = run_demo(built, tmp_path / "run", "--verbose", num_steps=10)
    text = "\n".join(lines)
    for raw in RAW_LINES:
        assert raw in text, raw
    assert any(PROGRESS.search(x) for x in lines)  # Ours stay.
    assert (tmp_path / "run" / "parameters.txt").exists()


def test_progress_line_shows_rates_once_they_change():
    p = console.Progress(num_steps=100, start_step=0)
    train = {"loss": 0.634, "accuracy": 0.799, "learning_rate": 0.1, "dropout_rate": 0.9}
    first = p.line(10, train)
    assert first.startswith("step 10/100  loss 0.634  train acc 79.9%  ") and "ETA" in first
    assert " lr " not in first and "dropout" not in first
    later = p.line(20, {**train, "learning_rate": 0.01})
    assert "  lr 0.01  " in later and "dropout" not in later
    assert "ETA" not in p.line(100, train)


def test_eval_line_puts_the_runs_method_first():
    def row(method, domain, split, test, acc):
        return {
            "method": method,
            "domain": domain,
            "split": split,
            "is_test_domain": test,
            "accuracy": acc,
        }

    rows = [
        row("moving_average", "a", "out", False, 0.95),
        row("moving_average", "t", "in", True, 0.53),
        row("erm", "a", "out", False, 0.943),
        row("erm", "a", "in", False, 0.99),
        row("erm", "t", "in", True, 0.521),
    ]
    line = console.eval_line(450, rows, "erm")
    assert line == "eval step 450: ID 94.3%  OOD 52.1%  |  moving_average: ID 95.0%  OOD 53.0%"
    assert console.percent(math.nan) == "n/a"


def test_durations_read_short():
    assert [console.duration(s) for s in (4.4, 85, 7380)] == ["4s", "1m25s", "2h03m"]


def test_console_part_of_the_writer_only_when_verbose(tmp_path):
    from clu import metric_writers

    def kinds(writer):
        found = {type(w._writer) for w in writer._writers}  # Each in an AsyncWriter.
        writer.close()
        return found

    try:
        assert metric_writers.LoggingWriter not in kinds(writers.make_writer(tmp_path, True))
        console.set_verbose(True)
        assert metric_writers.LoggingWriter in kinds(writers.make_writer(tmp_path, True))
        assert kinds(writers.make_writer(tmp_path, False)) == {metric_writers.LoggingWriter}
    finally:
        console.set_verbose(False)


def test_events_for_a_bucket_are_staged_locally_and_copied_whole(tmp_path):
    import tensorflow as tf
    from etils import epath

    target = tmp_path / "bucket_run"  # A local folder standing in for gs://bucket/run.
    writer = writers.MirroredSummaryWriter(epath.Path(target), upload_every=0.0)
    staging = writer._staging
    writer.write_scalars(1, {"train/loss": 0.5})  # Copied at once (upload_every 0).
    (events,) = target.iterdir()
    assert events.name.startswith("events.out.tfevents.") and events.stat().st_size > 0
    writer.write_scalars(2, {"train/loss": 0.25})
    writer.close()
    assert not os.path.exists(staging) and [p.name for p in target.iterdir()] == [events.name]
    values = [
        (e.step, v.tag, float(tf.make_ndarray(v.tensor)))
        for e in tf.compat.v1.train.summary_iterator(str(events))
        for v in e.summary.value
    ]
    assert values == [(1, "train/loss", 0.5), (2, "train/loss", 0.25)]
    # The console prints a gs:// workdir as the URL it is.
    assert console.summary_lines(
        {
            "method": "erm",
            "dataset": "d",
            "test_domains": ["t"],
            "selected": {"step": 1, "id_accuracy": 0.5, "ood_accuracy": 0.5},
        },
        epath.Path("gs://bucket/run"),
    )[-2:] == [
        "  python -m richft_jax.report gs://bucket/run",
        "  tensorboard --logdir gs://bucket/run",
    ]
