"""gs:// against a local Cloud Storage emulator (tests/gcs_emulator.py, whose docstring says what
each environment variable is for and which client it cannot stand in for: TensorFlow's).

First the clients on their own, each in a subprocess started with the emulator's environment
(epath reads EPATH_USE_TF once per process): etils.epath's file operations, and an Orbax
CheckpointManager on a gs:// directory (google-cloud-storage for the bucket, tensorstore for the
arrays, epath for the metadata). What the bucket then holds is read through the emulator's own
JSON API, independently of the clients under test.
"""

import json
import os
import subprocess
import sys
import textwrap

import gcs_emulator
import pytest


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running() as emulator:
        yield emulator


def python(gcs, code: str, cwd, timeout: float = 300) -> dict:
    """Runs `code` in a new Python with the emulator's environment, in `cwd`; the JSON object
    its last stdout line prints."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=gcs.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:] + gcs.log()
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_epath_round_trip_on_the_bucket(gcs, tmp_path):
    root = f"gs://{gcs.bucket}/epath"
    seen = python(
        gcs,
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
    seen = python(
        gcs,
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
