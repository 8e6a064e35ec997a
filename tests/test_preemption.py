"""Kill -9 at arbitrary moments, also in the middle of a checkpoint write: every rerun of the
same command resumes, and the final state is bit-identical to an uninterrupted run."""

import os
import pathlib
import random
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from cli import demo_command

from richft_jax import checkpoints, config_lib, results, train

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = {
    "pretrained.path": "",  # A random backbone: no pretraining needed.
    "num_steps": 12,
    "checkpoint_every": 3,
    "eval_every": 6,
    "log_every": 3,
    "data.eval_batch_size": 32,
    "data.eval_max_examples": 32,
}
KILL_SEEDS = (0, 1)  # Each seed: a kill at a random moment after the rerun resumed.


def command(data_dir, workdir):
    return demo_command(workdir, data_dir, overrides=OVERRIDES)


def start(cmd, **env):
    """Starts the CLI; its stderr is collected by a thread (so the pipe never fills)."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    return proc, lines, reader


def tmp_dirs(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "orbax-checkpoint-tmp" in p.name)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run (here, same 8 devices as the subprocesses)."""
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    for key, value in OVERRIDES.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    workdir = tmp_path_factory.mktemp("preemption") / "uninterrupted"
    train.train_and_evaluate(c, str(workdir))
    return workdir


def test_kill_9_anywhere_then_rerun_is_bit_identical(reference, data_dir, tmp_path):
    workdir = tmp_path / "killed"
    ckpts = workdir / checkpoints.LATEST
    cmd = command(data_dir, workdir)

    # 1. Killed in the middle of writing the step-6 checkpoint.
    proc, lines, reader = start(cmd, **{checkpoints.KILL_IN_SAVE_ENV: "checkpoints:6"})
    assert proc.wait(timeout=600) == -signal.SIGKILL, "".join(lines)[-3000:]
    reader.join()
    assert sorted(os.listdir(ckpts)) == ["3", *tmp_dirs(ckpts)]
    assert tmp_dirs(ckpts) and tmp_dirs(ckpts)[0].startswith("6.")  # Uncommitted write.
    # What the interrupted write left never passes for a checkpoint: the last one restores.
    assert int(checkpoints.restore_state_tree(workdir)["step"]) == 3
    assert {r["step"] for r in results.read_rows(workdir)} == {6}  # Step 6 was evaluated.
    assert not (workdir / results.SUMMARY).exists()

    # 2. Killed at random moments after each rerun resumed (seeded, so the test repeats); the
    # first rerun resumed from the last finished checkpoint, step 3.
    for i, seed in enumerate(KILL_SEEDS):
        proc, lines, reader = start(cmd)
        deadline = time.time() + 600
        while not any("Resumed from step" in line for line in lines) and proc.poll() is None:
            assert time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.02)
        time.sleep(random.Random(seed).uniform(0.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        reader.join()
        assert "Resumed from step" in "".join(lines), "".join(lines)[-3000:]
        if i == 0:
            assert "Resumed from step 3 (" in "".join(lines), "".join(lines)[-3000:]
        # Whatever was cut, the latest finished checkpoint restores.
        assert int(checkpoints.restore_state_tree(workdir)["step"]) >= 3

    # 3. The same command, uninterrupted, finishes the run.
    proc, lines, reader = start(cmd)
    assert proc.wait(timeout=600) == 0, "".join(lines)[-3000:]
    reader.join()
    assert "Resumed from step" in "".join(lines)
    assert tmp_dirs(ckpts) == []  # Leftovers of killed writes were cleaned up.

    a, b = checkpoints.restore_state_tree(reference), checkpoints.restore_state_tree(workdir)
    assert int(b["step"]) == 12
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):  # Params, opt state, key, step.
        np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))
    key = lambda r: (r["step"], r["domain"], r["split"], r["accuracy"], r["loss"])  # noqa: E731
    assert [key(r) for r in results.read_rows(workdir)] == [
        key(r) for r in results.read_rows(reference)
    ]
    best_a, best_b = (checkpoints.restore_state_tree(d / "best") for d in (reference, workdir))
    for x, y in zip(jax.tree.leaves(best_a), jax.tree.leaves(best_b), strict=True):
        np.testing.assert_array_equal(y, x)
