"""The write side of a run on gs://, against the local Cloud Storage emulator
(tests/gcs_emulator.py): results as one object per round, the workdir lease, TensorBoard events
copied through epath, and the checkpoint look-ups, each in a subprocess started with the
emulator's environment; the bucket read back through the emulator's own JSON API."""

import json
import os
import signal
import subprocess
import sys
import time

import gcs_emulator
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running() as emulator:
        yield emulator


def test_results_are_one_object_per_round_and_read_back_as_rows(gcs, tmp_path):
    root = f"gs://{gcs.bucket}/results"
    seen = gcs.python(
        f"""
        import json
        from richft_jax import results
        root = {root!r}
        seen = {{"before": results.read_rows(root), "has_before": results.has_results(root)}}
        results.append_rows(root, [{{"step": -1, "d": "a"}}, {{"step": -1, "d": "b"}}])
        results.append_rows(root, [{{"step": 10, "d": "a"}}])
        results.append_rows(root, [{{"step": 20, "d": "a"}}])
        seen["rows"] = results.read_rows(root)
        seen["via_file"] = results.read_rows(root + "/results.jsonl")
        seen["dropped"] = results.truncate_after(root, 10)
        seen["after"] = results.read_rows(root)
        results.write_json_atomic(root + "/summary.json", {{"ok": 1}})
        print(json.dumps(seen))
        """,
        tmp_path,
    )
    assert seen["before"] == [] and seen["has_before"] is False
    assert (
        [r["step"] for r in seen["rows"]]
        == [-1, -1, 10, 20]
        == [r["step"] for r in seen["via_file"]]
    )
    assert seen["dropped"] == 1 and [r["step"] for r in seen["after"]] == [-1, -1, 10]
    names = gcs.names("results/")
    rounds = [n for n in names if n.startswith("results/results.jsonl.d/")]
    assert [n.split("/")[-1][:9] for n in rounds] == ["00000000-", "00000001-"]
    assert "results/results.jsonl" not in names  # No growing object rewritten per round.
    assert gcs.read(rounds[1]) == b'{"d": "a", "step": 10}\n'
    assert json.loads(gcs.read("results/summary.json")) == {"ok": 1}
    assert os.listdir(tmp_path) == []  # Never a local "gs:" folder.


def test_the_lease_refuses_a_second_run_heartbeats_and_is_released(gcs, tmp_path):
    root = f"gs://{gcs.bucket}/leased"
    seen = gcs.python(
        f"""
        import json, time
        from etils import epath
        from richft_jax import lease, workdir
        lease.SETTLE_S, lease.INTERVAL_S = 0.0, 0.2
        root = epath.Path({root!r})
        seen = {{}}
        with workdir.exclusive_workdir(str(root)):
            first = json.loads((root / lease.LEASE).read_text())
            time.sleep(1.0)
            seen["advanced"] = json.loads((root / lease.LEASE).read_text())["heartbeat"] > (
                first["heartbeat"])
            try:
                with workdir.exclusive_workdir(str(root)):
                    seen["second"] = "ran"
            except RuntimeError as e:
                seen["second"] = str(e)
        seen["released"] = not (root / lease.LEASE).exists()
        print(json.dumps(seen))
        """,
        tmp_path,
    )
    assert seen["advanced"] and seen["released"]
    assert f"workdir 'gs://{gcs.bucket}/leased' is in use by another run" in seen["second"]
    assert f"gcloud storage rm gs://{gcs.bucket}/leased/.lease.json" in seen["second"]
    assert gcs.names("leased/") == []


def test_events_and_checkpoints_go_to_the_bucket_through_epath(gcs, tmp_path):
    root = f"gs://{gcs.bucket}/run"
    seen = gcs.python(
        f"""
        import json
        import numpy as np
        from richft_jax import checkpoints, writers
        root = {root!r}
        writer = writers.make_writer(root, is_main=True)
        writer.write_scalars(1, {{"train/loss": 0.5}})
        writer.close()
        mngr = checkpoints.manager(root + "/checkpoints")
        for step in (1, 2):
            checkpoints.save(mngr, step, {{"params": {{"w": np.full((2, 3), step, np.float32)}}}})
        mngr.wait_until_finished()
        mngr.close()
        tree = checkpoints.restore_state_tree(root)
        print(json.dumps({{
            "latest": str(checkpoints.latest_step_dir(root)),
            "w": tree["params"]["w"].tolist(),
        }}))
        """,
        tmp_path,
    )
    assert seen["latest"] == f"{root}/checkpoints/2"
    assert seen["w"] == [[2.0] * 3] * 2
    names = gcs.names("run/")
    assert len([n for n in names if n.startswith("run/events.out.tfevents.")]) == 1
    assert "run/checkpoints/2/commit_success.txt" in names
    assert os.listdir(tmp_path) == []


def test_the_emulator_dies_with_the_process_that_started_it():
    """A test process killed outright (SIGKILL: no cleanup runs) leaves no emulator behind,
    and starting one does not fork this multithreaded process (no preexec_fn)."""
    starter = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import gcs_emulator; "
        "e = gcs_emulator.Emulator(); print(e.process.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter, os.path.join(REPO, "tests")], stdout=subprocess.PIPE
    )
    try:
        pid = int(parent.stdout.readline())
        with open(f"/proc/{pid}/cmdline", "rb") as f:  # The emulator itself (exec'd), alive.
            assert b"-backend=memory" in f.read()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        assert not _running(pid), f"emulator {pid} outlived the process that started it"
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
