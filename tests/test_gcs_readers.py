"""The readers on a bucket, end to end, against the local Cloud Storage emulator
(tests/gcs_emulator.py; report and combine: tests/test_gcs.py).

The tiny demo with config.pretrained.path=gs://BUCKET/pretrained pretrains its backbone into
the bucket, then fine-tunes from it into gs://BUCKET/run; linear_regime reads that run and its
θ0 from the bucket and writes its figures there, with the numbers it gives on a local copy;
convert reads a published .npz from the bucket and writes its Orbax checkpoint there, which
loads to the function the file gives. Every command runs in an empty working directory, which
stays empty (a gs:// URL never becomes a local "gs:" folder).
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import gcs_emulator
import numpy as np
import pytest
from cli import demo_command

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def built(pretraining_data_dir):
    """The demo's dataset built (gcs_emulator.build_demo_data) and the letters the backbone is
    pretrained on, small (conftest.py)."""
    return pretraining_data_dir


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """The working directory of every command: stays empty."""
    return tmp_path_factory.mktemp("cwd")


def command(gcs, cmd: list[str], cwd, timeout: float = 600) -> str:
    """Runs `cmd` with the emulator's environment on the CPU; its console."""
    done = subprocess.run(
        cmd,
        cwd=cwd,
        env=dict(gcs.env, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:] + gcs.log()
    return done.stdout + done.stderr


def copy_down(gcs, prefix: str, target: pathlib.Path) -> pathlib.Path:
    """The objects under `prefix` ("run/"), copied one by one into the folder `target`."""
    for name in gcs.names(prefix):
        if not name.endswith("/"):
            path = target / name.removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gcs.read(name))
    return target


@pytest.fixture(scope="module")
def bucket_run(gcs, built, cwd):
    """gs://BUCKET/run: the tiny demo fine-tuned from the backbone it first pretrains into
    gs://BUCKET/pretrained (its config's pretrain_config); the console."""
    cmd = demo_command(
        f"gs://{gcs.bucket}/run",
        built,
        overrides={"pretrained.path": f"gs://{gcs.bucket}/pretrained"},
    )
    cmd = [f"--config={REPO}/configs/demo.py:tiny" if a.startswith("--config=") else a for a in cmd]
    return command(gcs, cmd, cwd, timeout=900)


def test_the_demo_pretrains_into_the_bucket_and_loads_from_it(gcs, bucket_run, cwd):
    assert f"into gs://{gcs.bucket}/pretrained" in bucket_run
    names = gcs.names("pretrained/")
    assert "pretrained/config.json" in names
    assert any(n.endswith("/commit_success.txt") for n in names)  # A committed checkpoint.
    config = json.loads(gcs.read("run/config.json"))
    assert config["pretrained"]["path"] == f"gs://{gcs.bucket}/pretrained"
    assert "run/summary.json" in gcs.names("run/")
    assert os.listdir(cwd) == [] and not (REPO / "gs:").exists()


def test_linear_regime_reads_the_bucket(gcs, bucket_run, built, cwd, tmp_path):
    """linear_regime on gs://BUCKET/run (θ0 from gs://BUCKET/pretrained), --out in the bucket:
    the numbers it gives on a local copy of both."""
    flags = ["--analyses=taylor", "--max_examples=32", f"--data_dir={built}"]
    module = [sys.executable, "-m", "richft_jax.analysis.linear_regime"]
    out = f"gs://{gcs.bucket}/linear_regime"
    command(gcs, [*module, f"--runs=gs://{gcs.bucket}/run", f"--out={out}", *flags], cwd)
    remote = json.loads(gcs.read("linear_regime/summary.json"))
    names = gcs.names("linear_regime/")
    assert {f"linear_regime/taylor_agreement.{s}" for s in ("png", "json")} <= set(names)
    assert gcs.read("linear_regime/taylor_agreement.png").startswith(b"\x89PNG")
    [(name, numbers)] = remote.items()
    assert numbers["run"] == f"gs://{gcs.bucket}/run"
    assert numbers["pretrained"] == f"gs://{gcs.bucket}/pretrained"

    local_run = copy_down(gcs, "run/", tmp_path / "run")
    local_pretrained = copy_down(gcs, "pretrained/", tmp_path / "pretrained")
    local_out = tmp_path / "local_out"
    local_flags = [f"--pretrained={local_pretrained}", *flags]
    command(gcs, [*module, f"--runs={local_run}", f"--out={local_out}", *local_flags], cwd)
    local = json.loads((local_out / "summary.json").read_text())
    assert local[name]["step"] == numbers["step"]
    for key, value in numbers["taylor"].items():  # {"id": ..., "ood": ...} or the step.
        assert local[name]["taylor"][key] == pytest.approx(value, abs=1e-6), key
    assert os.listdir(cwd) == [] and not (REPO / "gs:").exists()


def test_convert_reads_and_writes_the_bucket(gcs, cwd, tmp_path):
    """A published .npz in the bucket converted into gs://BUCKET/vit (the command line); the
    checkpoint loads to the function the local file gives."""
    from test_pretrained_models import TINY_VIT, vit_npz_params

    local = tmp_path / "vit.npz"
    np.savez(local, **vit_npz_params(np.random.default_rng(0), **TINY_VIT, grid=4, classes=7))
    source, out = f"gs://{gcs.bucket}/published/vit.npz", f"gs://{gcs.bucket}/vit"
    gcs.write("published/vit.npz", local.read_bytes())  # Published: put there by hand.
    convert = [sys.executable, "-m", "richft_jax.convert", f"--source={source}"]
    printed = command(gcs, [*convert, "--format=big_vision_npz", f"--out={out}"], cwd)
    assert f"Wrote {out}" in printed
    assert "vit/checkpoints/0/commit_success.txt" in gcs.names("vit/")
    code = f"""
        import json
        import jax, numpy as np
        from richft_jax.models import from_pretrained
        x = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
        logits = []
        for path in ({out!r}, {str(local)!r}):
            model, variables = from_pretrained("vit_b16", path, **{TINY_VIT!r})
            logits.append(np.asarray(model.apply(variables, x, train=False)))
        print(json.dumps({{"diff": float(np.abs(logits[0] - logits[1]).max())}}))
    """
    printed = command(gcs, [sys.executable, "-c", textwrap.dedent(code)], cwd)
    [line] = [x for x in printed.splitlines() if x.startswith('{"diff"')]
    assert json.loads(line) == {"diff": 0.0}
    assert os.listdir(cwd) == [] and not (REPO / "gs:").exists()
