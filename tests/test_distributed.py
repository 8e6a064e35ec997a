"""Multi-host on CPU: two processes joined by jax.distributed (localhost coordinator, gloo
collectives), 4 devices each, against this process (8 devices) with the same global batch."""

import json
import os
import pathlib
import socket
import subprocess

import jax
import numpy as np
import pytest
from cli import demo_command, env_with_devices

from richft_jax import checkpoints, config_lib, parallel, results, train
from richft_jax.data import pipeline, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
OVERRIDES = {
    "pretrained.path": "",  # A random backbone: no pretraining needed.
    "num_steps": STEPS,
    "eval_every": 3,
    "checkpoint_every": 3,
    "log_every": 3,
    "data.eval_batch_size": 32,
    "data.eval_max_examples": 64,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(data_dir, workdir, *extra):
    """The real CLI on the tiny demo with OVERRIDES (with Orbax's INFO lines: the test reads
    them to see each process join the saves)."""
    return demo_command(workdir, data_dir, "--library_logs", *extra, overrides=OVERRIDES)


def in_process_config(data_dir):
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    for key, value in OVERRIDES.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def failure_excerpt(log: str, limit: int = 2500) -> str:
    """What a crashed process said: where it crashed natively, the native message before
    faulthandler's "Fatal Python error" and the crashing thread's stack (not the list of
    extension modules that ends the log); otherwise the log's tail."""
    fatal = log.find("Fatal Python error")
    if fatal < 0:
        return log[-limit:]
    current = log.find("Current thread", fatal)
    stack = log[current : log.find("\n\n", current)] if current >= 0 else ""
    return f"{log[max(0, fatal - limit) : fatal + 200]}\n...\n{stack[:limit]}"


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Runs 2 processes x 4 devices and, meanwhile, the same run here on 8 devices."""
    sources.load_arrays("digits_domains", data_dir=str(data_dir))  # Build once, not 3 times.
    root = tmp_path_factory.mktemp("distributed")
    one, two = root / "one_process", root / "two_processes"
    flags = [f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2"]
    # Their logs go to files, not pipes: a pipe nobody drains while this process trains (or
    # waits on the other) fills at 64 KiB, and a process blocked writing its log stalls the
    # other at the next collective until XLA aborts it.
    log_paths = {i: root / f"process_{i}.log" for i in range(2)}
    procs = {}
    for i in range(2):
        with log_paths[i].open("w") as log:
            procs[i] = subprocess.Popen(
                command(data_dir, two, *flags, f"--process_id={i}"),
                cwd=REPO,
                env=env_with_devices(4),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
    try:
        assert jax.device_count() == 8 and jax.process_count() == 1
        train.train_and_evaluate(in_process_config(data_dir), str(one))
        for proc in procs.values():
            proc.wait(timeout=400)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    logs = {name: path.read_text() for name, path in log_paths.items()}
    # Every failed process's words: one that dies takes the other down with it (the coordination
    # service aborts the survivor), so the first one's log alone can hide the cause.
    failed = {name: p.returncode for name, p in procs.items() if p.returncode != 0}
    assert not failed, "\n\n".join(
        f"process {name} exited {code}:\n{failure_excerpt(logs[name])}"
        for name, code in failed.items()
    )
    return one, two, logs


def test_each_process_joined_the_eight_device_mesh(runs):
    _, _, logs = runs
    assert "Process 0 of 2; 4 local / 8 global devices." in logs[0]
    assert "Process 1 of 2; 4 local / 8 global devices." in logs[1]


def test_two_processes_log_the_same_metrics_as_one(runs):
    one, two, _ = runs
    a, b = results.read_rows(one), results.read_rows(two)
    # Only process 0 wrote: one row per (step, method, domain, split), not two.
    assert len(b) == len(a) == 2 * 8  # Steps 3 and 6, 4 domains x {in, out}.
    key = lambda r: (r["step"], r["method"], r["domain"], r["split"])  # noqa: E731
    assert [key(r) for r in b] == [key(r) for r in a]
    assert [r["accuracy"] for r in b] == [r["accuracy"] for r in a]
    assert [r["num_examples"] for r in b] == [r["num_examples"] for r in a]
    # Losses: the cross-process all-reduce (gloo) sums the 4 shards in another order.
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    sa = json.loads((one / "summary.json").read_text())
    sb = json.loads((two / "summary.json").read_text())
    assert sb["selected"]["step"] == sa["selected"]["step"]
    assert sb["final_train"]["accuracy"] == sa["final_train"]["accuracy"]
    assert sb["final_train"]["loss"] == pytest.approx(sa["final_train"]["loss"], rel=1e-6)


def test_two_processes_reach_the_same_parameters_as_one(runs):
    one, two, logs = runs
    a, b = checkpoints.restore_state_tree(one), checkpoints.restore_state_tree(two)
    assert int(a["step"]) == int(b["step"]) == STEPS
    np.testing.assert_array_equal(a["rng"], b["rng"])
    # Equal up to the all-reduce's summation order (a few ulps after 6 steps).
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a["params"]), jax.tree.leaves(b["params"]), strict=True
    ):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # Process 1 took part in every Orbax save of the shared workdir.
    for step in (3, STEPS):
        assert f"[process=1] [async] Started save checkpoint @ {two}/checkpoints/{step}" in logs[1]
    assert sorted(os.listdir(two / "checkpoints")) == ["3", str(STEPS)]


def test_each_host_gathers_only_its_rows_of_the_global_batch(data_dir):
    """Host i's batch is rows [i n/2, (i+1) n/2) of the one-host batch, augmentation included."""
    data = pipeline.load_domains("digits_domains", "syn", 0, data_dir=str(data_dir))

    def batches(index, count):
        ds = pipeline.train_dataset(
            data,
            seed=3,
            batch_size_per_domain=6,  # 18 rows: host 0 gets domain 0 and half of domain 1.
            start_step=5,
            num_steps=7,
            augment="flip_crop",
            process_index=index,
            process_count=count,
        )
        return list(ds.as_numpy_iterator())

    whole, host0, host1 = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(whole) == len(host0) == len(host1) == 2
    for w, h0, h1 in zip(whole, host0, host1, strict=True):
        assert len(h0["label"]) == len(h1["label"]) == 9
        for k in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), w[k])
    with pytest.raises(ValueError, match="global batch .*= 18.* number of hosts \\(4\\)"):
        batches(0, 4)


def test_host_slice_gives_each_host_its_contiguous_share(monkeypatch):
    batch = {"image": np.arange(8)[:, None], "mask": np.arange(8) < 5}
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    share = parallel.host_slice(batch)
    np.testing.assert_array_equal(share["image"][:, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(share["mask"], [True, False, False, False])
    with pytest.raises(ValueError, match="7 rows cannot be split over 2 hosts"):
        parallel.host_slice({"image": np.zeros(7)})
