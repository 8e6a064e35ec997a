"""gs:// against a local Cloud Storage emulator (tests/gcs_emulator.py, whose docstring says what
each environment variable is for and which client it cannot stand in for: TensorFlow's).

First the clients on their own, each in a subprocess started with the emulator's environment
(epath reads EPATH_USE_TF once per process): etils.epath's file operations, and an Orbax
CheckpointManager on a gs:// directory (google-cloud-storage for the bucket, tensorstore for the
arrays, epath for the metadata). What the bucket then holds is read through the emulator's own
JSON API, independently of the clients under test.

Then the project on a gs:// workdir, end to end, through its real command lines: the tiny demo
(a random backbone: no pretraining) into gs://BUCKET/run, stopped by SIGTERM (a preemption
notice) after its first evaluation, rerun and killed (SIGKILL) in the middle of writing its
last checkpoint, rerun again: each rerun of the same command resumes from the bucket, and the
last one ends as the killed one would have; the report and the combine entry point read the run
from the bucket and give what they give on a local copy of it (or what the run logged). Every
command runs in an empty working directory, which stays empty (a gs:// URL never becomes a
local "gs:" folder).
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import gcs_emulator
import pytest
from cli import demo_command

from richft_jax import lease, report, results

REPO = pathlib.Path(__file__).resolve().parents[1]
# The tiny demo on a random backbone (no pretraining); 20 steps, evaluated at 10 and 20.
OVERRIDES = {"pretrained.path": ""}


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running() as emulator:
        yield emulator


def test_epath_round_trip_on_the_bucket(gcs, tmp_path):
    root = f"gs://{gcs.bucket}/epath"
    seen = gcs.python(
        f"""
        import json
        from etils import epath
        from etils.epath import gpath
        root = epath.Path({root!r})
        seen = {{"tf_backend": gpath._is_tf_installed(), "exists_before": root.exists()}}
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "a.txt").write_text("alpha")
        (root / "sub" / "b.json").write_text(json.dumps({{"x": 1}}))
        (root / "sub" / "c.bin").write_bytes(bytes(range(256)))
        seen["read"] = (root / "a.txt").read_text()
        seen["json"] = json.loads((root / "sub" / "b.json").read_text())
        seen["bytes_ok"] = (root / "sub" / "c.bin").read_bytes() == bytes(range(256))
        seen["exists"] = [(root / n).exists() for n in ("a.txt", "sub", "sub/b.json", "nope")]
        seen["is_dir"] = [(root / n).is_dir() for n in ("sub", "a.txt")]
        seen["is_file"] = [(root / n).is_file() for n in ("a.txt", "sub")]
        seen["iterdir"] = sorted(p.name for p in root.iterdir())
        seen["glob"] = sorted(str(p) for p in root.glob("sub/*.json"))
        seen["str"] = str(root / "sub")
        (root / "a.txt").unlink()
        seen["unlinked"] = not (root / "a.txt").exists()
        (root / "sub").rmtree()
        seen["rmtree"] = not (root / "sub").exists()
        (root / "kept.txt").write_text("kept")
        print(json.dumps(seen))
        """,
        cwd=tmp_path,
    )
    assert seen["tf_backend"] is False  # EPATH_USE_TF=false: fsspec (gcsfs), not tf.io.gfile.
    assert seen["exists_before"] is False
    assert seen["read"] == "alpha" and seen["json"] == {"x": 1} and seen["bytes_ok"]
    assert seen["exists"] == [True, True, True, False]
    assert seen["is_dir"] == [True, False] and seen["is_file"] == [True, False]
    assert seen["iterdir"] == ["a.txt", "sub"]
    assert seen["glob"] == [f"{root}/sub/b.json"]
    assert seen["str"] == f"{root}/sub"  # A URL stays a URL.
    assert seen["unlinked"] and seen["rmtree"]
    # The bucket, read through the emulator's JSON API: what is left, where it was written.
    assert [n for n in gcs.names("epath/") if not n.endswith("/")] == ["epath/kept.txt"]
    assert gcs.read("epath/kept.txt") == b"kept"
    # gs://... never became a local folder: nothing was created in the working directory.
    assert os.listdir(tmp_path) == []


def test_orbax_checkpoint_manager_on_the_bucket(gcs, tmp_path):
    """Saves 3 steps keeping 2, restores equal values, and a new manager finds the latest."""
    directory = f"gs://{gcs.bucket}/ckpt"
    seen = gcs.python(
        f"""
        import json
        import jax, jax.numpy as jnp, numpy as np
        import orbax.checkpoint as ocp
        from etils import epath
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))

        def tree(step):
            w = jnp.arange(8 * len(jax.devices()) * 3, dtype=jnp.float32).reshape(-1, 3) * step
            b = jnp.full((3,), -step, jnp.bfloat16)
            return {{
                "params": {{"w": jax.device_put(w, sharding), "b": b}},
                "step": np.asarray(step, np.int32),
                "rng": np.arange(4, dtype=np.uint32) + step,
            }}

        options = ocp.CheckpointManagerOptions(max_to_keep=2)
        with ocp.CheckpointManager(epath.Path({directory!r}), options=options) as manager:
            for step in (1, 2, 3):
                manager.save(step, args=ocp.args.StandardSave(tree(step)))
            manager.wait_until_finished()
            steps = list(manager.all_steps())

        with ocp.CheckpointManager(epath.Path({directory!r})) as again:
            latest = again.latest_step()
            target = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree(0))  # Shapes, shardings.
            restored = again.restore(latest, args=ocp.args.StandardRestore(target))
        expected = tree(3)
        equal = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                             restored, expected)
        sharded = restored["params"]["w"].sharding.is_equivalent_to(sharding, 2)

        from google.cloud import storage  # The client Orbax uses for the bucket.
        from orbax.checkpoint._src.path import gcs_utils
        client = storage.Client()
        listed = sorted(b.name for b in client.list_blobs({gcs.bucket!r}, prefix="ckpt/"))
        print(json.dumps({{
            "steps": steps, "latest": latest, "equal": jax.tree.leaves(equal),
            "sharded": sharded, "devices": len(jax.devices()), "listed": listed,
            "hns": gcs_utils.is_hierarchical_namespace_enabled({directory!r}),
            "project": client.project,
        }}))
        """,
        cwd=tmp_path,
    )
    assert seen["devices"] == 8  # conftest's simulated devices: the array is written in shards.
    assert seen["steps"] == [2, 3] and seen["latest"] == 3
    assert all(seen["equal"]) and len(seen["equal"]) == 4 and seen["sharded"]
    assert not seen["hns"] and seen["project"] == gcs_emulator.PROJECT
    names = gcs.names("ckpt/")
    assert seen["listed"] == names  # google-cloud-storage sees what the JSON API lists.
    assert {n.split("/")[1] for n in names} == {"2", "3"}  # Step 1 deleted (max_to_keep=2).
    for step in ("2", "3"):
        # Committed on a bucket by a marker object (no temporary folder renamed), with the
        # arrays in tensorstore's OCDBT files and Orbax's metadata beside them.
        assert f"ckpt/{step}/commit_success.txt" in names
        assert f"ckpt/{step}/_CHECKPOINT_METADATA" in names
        assert f"ckpt/{step}/default/manifest.ocdbt" in names
        assert any(n.startswith(f"ckpt/{step}/default/ocdbt.process_0/d/") for n in names)
    assert not any(".orbax-checkpoint-tmp" in n for n in names)
    assert os.listdir(tmp_path) == []


# -- The project on a gs:// workdir, end to end.


@pytest.fixture(scope="module")
def built(data_dir):
    """The session's data dir with the demo's dataset built (gcs_emulator.build_demo_data)."""
    gcs_emulator.build_demo_data(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """The working directory of every command of the end-to-end tests: stays empty."""
    return tmp_path_factory.mktemp("cwd")


def demo(gcs, data_dir, workdir: str) -> list[str]:
    """The tiny demo's command line (its config by absolute path: it runs outside the repo)."""
    cmd = demo_command(workdir, data_dir, overrides=OVERRIDES)
    return [
        f"--config={REPO}/configs/demo.py:tiny" if a.startswith("--config=") else a for a in cmd
    ]


def env(gcs) -> dict:
    return dict(gcs.env, JAX_PLATFORMS="cpu")


def run_command(gcs, cmd: list[str], cwd, log: pathlib.Path, timeout: float = 600) -> str:
    """Runs `cmd` to its end; its console (stdout and stderr), also kept in `log`."""
    with open(log, "w") as out:
        done = subprocess.run(
            cmd, cwd=cwd, env=env(gcs), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    text = log.read_text()
    assert done.returncode == 0, text[-4000:] + gcs.log()
    return text


def bucket_rows(gcs, prefix: str = "run/") -> list[dict]:
    """The result rows in the bucket under `prefix`, read through the JSON API."""
    rows = []
    for name in gcs.names(prefix):
        if name.removeprefix(prefix).startswith(results.RESULTS):
            text = gcs.read(name).decode()
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def stop_when(gcs, cmd, cwd, log: pathlib.Path, ready, signum: int) -> dict:
    """Starts `cmd`, sends it `signum` as soon as `ready(object names under run/)` holds, waits
    for its end. Its console and return code, the bucket's objects and rows then."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(gcs), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        try:
            while not ready(gcs.names("run/")):
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "not there after 600 s"
                time.sleep(0.02)
            proc.send_signal(signum)
            returncode = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "log": log.read_text(),
        "returncode": returncode,
        "names": set(gcs.names("run/")),
        "rows": bucket_rows(gcs),
    }


@pytest.fixture(scope="module")
def bucket_run(gcs, built, cwd, tmp_path_factory):
    """gs://BUCKET/run, three times the same command: stopped by SIGTERM (a preemption notice:
    it saves and returns) once its step-10 rows are in the bucket; killed (SIGKILL) as soon as
    the first object of checkpoint 20 is; then to the end. The consoles, and the bucket's
    objects and rows after each stop."""
    logs = tmp_path_factory.mktemp("logs")
    workdir = f"gs://{gcs.bucket}/run"
    cmd = demo(gcs, built, workdir)
    has_rows = lambda names: any(n.startswith("run/results.jsonl") for n in names)  # noqa: E731
    stopped = stop_when(gcs, cmd, cwd, logs / "stopped.log", has_rows, signal.SIGTERM)
    writing = lambda names: any(n.startswith("run/checkpoints/20/") for n in names)  # noqa: E731
    killed = stop_when(gcs, cmd, cwd, logs / "killed.log", writing, signal.SIGKILL)
    # A killed run's lease stays fresh for lease.STALE_AFTER_S: deleted, as its refusal says.
    gcs.delete(f"run/{lease.LEASE}")
    last = run_command(gcs, cmd, cwd, logs / "last.log")
    return {"workdir": workdir, "stopped": stopped, "killed": killed, "last": last}


@pytest.fixture(scope="module")
def local_copy(gcs, bucket_run, tmp_path_factory):
    """The finished run, copied object by object from the bucket into a local folder."""
    local = tmp_path_factory.mktemp("copy") / "run"
    for name in gcs.names("run/"):
        if not name.endswith("/"):
            target = local / name.removeprefix("run/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gcs.read(name))
    return local


def test_the_run_is_in_the_bucket(gcs, bucket_run, local_copy, cwd):
    names = gcs.names("run/")
    for name in ("config.json", "summary.json", "parameters.txt"):
        assert f"run/{name}" in names
    assert any(n.startswith("run/results.jsonl") for n in names)
    assert any(n.startswith("run/events.out.tfevents.") for n in names)  # TensorBoard's.
    summary = json.loads(gcs.read("run/summary.json"))
    best = summary["selected"]["step"]
    assert best in (10, 20)
    assert summary["timings_s"]["startup"] > 0  # `python -m richft_jax.main` started it.
    for step in ("checkpoints/10", "checkpoints/20", f"best/{best}"):
        assert f"run/{step}/commit_success.txt" in names, step  # Committed, as Orbax does there.
    assert not any(".orbax-checkpoint-tmp" in n for n in names)
    assert json.loads(gcs.read("run/config.json"))["config_name"] == "demo_tiny"
    rows = results.read_rows(local_copy)
    assert sorted({r["step"] for r in rows}) == [10, 20]
    assert len(rows) == 16  # 2 evaluations x 4 domains x 2 splits: none twice after resuming.
    assert os.listdir(cwd) == [] and not (REPO / "gs:").exists()


def test_reruns_resume_from_the_bucket(bucket_run, local_copy):
    first, killed, last = bucket_run["stopped"], bucket_run["killed"], bucket_run["last"]
    assert first["returncode"] == 0, first["log"][-3000:]
    stopped = re.search(r"SIGTERM: saved a checkpoint at step (\d+)", first["log"])
    assert stopped, first["log"][-3000:]
    step = int(stopped[1])
    assert 10 <= step < 20  # After its step-10 rows, before the end.
    assert f"run/checkpoints/{step}/commit_success.txt" in first["names"]
    assert "run/summary.json" not in first["names"]
    # The second run resumed there, and was killed with checkpoint 20 being written.
    assert killed["returncode"] == -signal.SIGKILL, killed["log"][-3000:]
    resumed = rf"Resumed from step {step} \({step} updates done; demo_tiny\); dropped 0 "
    assert re.search(resumed, killed["log"]), killed["log"][-3000:]
    assert "run/summary.json" not in killed["names"]
    assert sorted({r["step"] for r in killed["rows"]}) == [10, 20]
    # The third resumed from the last committed checkpoint: the SIGTERM one when the kill came
    # before Orbax's commit marker of step 20 (then its partial step-20 objects are ignored and
    # the killed run's step-20 rows dropped), else step 20; it trained only the steps after.
    if "run/checkpoints/20/commit_success.txt" in killed["names"]:
        step, dropped = 20, 0  # The kill came after the commit (rare: the save takes ~1 s).
    else:
        dropped = 8
    resumed = rf"Resumed from step {step} \({step} updates done; demo_tiny\); dropped {dropped} "
    assert re.search(resumed, last), last[-3000:]
    progress = [int(s) for s in re.findall(r"\] step (\d+)/20 ", last)]
    assert min(progress, default=20) > step or step == 20
    assert "eval step 10:" not in last
    assert ("eval step 20:" in last) == (step < 20)

    # ...and ended as the killed run would have: its step-20 rows again.
    def scores(rows, at):
        return sorted(
            (r["domain"], r["split"], r["accuracy"], r["loss"]) for r in rows if r["step"] == at
        )

    assert scores(results.read_rows(local_copy), 20) == scores(killed["rows"], 20)


def test_report_reads_the_bucket(gcs, bucket_run, local_copy, cwd, tmp_path):
    """`python -m richft_jax.report gs://...` prints the tables it prints for the local copy,
    and writes them into the bucket with --out."""
    out = f"gs://{gcs.bucket}/report"
    cmd = [sys.executable, "-m", "richft_jax.report", bucket_run["workdir"], f"--out={out}"]
    printed = run_command(gcs, cmd, cwd, tmp_path / "report.log")
    expected = report.write_report([str(local_copy)], str(tmp_path / "local_report"))
    assert expected.strip() and expected.strip() in printed
    assert gcs.read("report/tables.md").decode() == expected
    local_csv = (tmp_path / "local_report" / "results.csv").read_bytes()
    assert gcs.read("report/results.csv") == local_csv
    figures = sorted(p.name for p in (tmp_path / "local_report").iterdir())
    assert sorted(n.removeprefix("report/") for n in gcs.names("report/")) == figures
    assert os.listdir(cwd) == [] and not (REPO / "gs:").exists()


def test_combine_reads_the_bucket(gcs, bucket_run, local_copy, built, cwd, tmp_path):
    """The combine entry point restores the run from the bucket (twice: a soup of the run with
    itself is the run), writes its own workdir there, and scores what the run logged at its
    selected step."""
    cmd = [
        sys.executable,
        "-m",
        "richft_jax.main",
        f"--config={REPO}/configs/combine.py",
        f"--workdir=gs://{gcs.bucket}/combined",
        f"--config.checkpoints={bucket_run['workdir']},{bucket_run['workdir']}",
        f"--config.data_dir={built}",
        "--config.combinations=individual,uniform_soup",
    ]
    run_command(gcs, cmd, cwd, tmp_path / "combine.log")
    names = gcs.names("combined/")
    assert {"combined/config.json", "combined/summary.json"} <= set(names)
    copy = tmp_path / "combined"
    for name in names:
        if name.startswith("combined/results.jsonl"):
            target = copy / name.removeprefix("combined/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gcs.read(name))
    rows = results.read_rows(copy)
    best = json.loads(gcs.read("run/summary.json"))["selected"]["step"]
    logged = {
        (r["domain"], r["split"]): r["accuracy"]
        for r in results.read_rows(local_copy)
        if r["step"] == best
    }
    assert len(logged) == 8
    for method in ("individual", "uniform_soup"):
        scored = {(r["domain"], r["split"]): r["accuracy"] for r in rows if r["method"] == method}
        assert scored == pytest.approx(logged, abs=1e-6), method
    members = {r["member"] for r in rows if r["method"] == "individual"}
    assert members == {bucket_run["workdir"]}  # The run named as given: a URL, not ./gs:/...
    assert os.listdir(cwd) == [] and not (REPO / "gs:").exists()
