"""The Colab notebook runs headless, top to bottom, the way a new Colab user meets it: opened
outside any clone, it clones the repository (a local bare clone of this one, shallow, through
file://), takes the Colab install path (forced on; pip as a dry run whose commands are checked),
then trains the demo's default tiny runs with the cloned package and draws every figure."""

import json
import math
import os
import pathlib
import re
import shlex
import subprocess

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "launch" / "colab_linear_regime.ipynb"
FIGURES = ("taylor_agreement", "taylor_trajectory", "interpolation", "linear_finetune")
# What Colab ships built for its runtime: the install cell must never ask pip for these.
COLAB_SHIPS = {
    "jax",
    "jaxlib",
    "tensorflow",
    "tensorflow-cpu",
    "tensorboard",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "pillow",
}


def numbers(x):
    """Every int / float in a JSON value (NaN and Inf included, as json.loads reads them)."""
    if isinstance(x, dict):
        return [n for v in x.values() for n in numbers(v)]
    if isinstance(x, list):
        return [n for v in x for n in numbers(v)]
    return [x] if isinstance(x, int | float) and not isinstance(x, bool) else []


def requirement_names(args):
    """Distribution names of the requirement arguments of `pip install ARGS` (options skipped)."""
    names, skip = [], False
    for a in args:
        if skip or a.startswith("-"):
            skip = a in ("-c", "-e", "-r")  # Options taking a value.
            continue
        names.append(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", a)[0]).lower())
    return names


def test_notebook_runs_the_colab_path(tmp_path, data_dir, monkeypatch):
    bare = tmp_path / "repo.git"  # HEAD of this repository, as GitHub would serve it.
    subprocess.run(["git", "clone", "--quiet", "--bare", str(REPO), str(bare)], check=True)
    content = tmp_path / "content"  # Colab's /content: no clone around it.
    content.mkdir()
    assert not content.resolve().is_relative_to(REPO)
    clone = content.resolve() / "repo"
    xla_flags = " ".join(  # One CPU device, as a Colab CPU runtime has (not the tests' 8).
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
    )
    env = {
        "RICHFT_REPO": bare.as_uri(),  # file://: `git clone --depth 1` is shallow, as from GitHub.
        # The venv's editable install makes richft_jax importable from any directory: the
        # notebook is told to act as where it is not installed (clone, then import the clone).
        "RICHFT_FORCE_CLONE": "1",
        "RICHFT_ASSUME_COLAB": "1",  # The Colab install path...
        "RICHFT_PIP_DRY_RUN": "1",  # ...printing its pip commands instead of running them.
        "RICHFT_CACHE": str(tmp_path / "cache"),  # The tiny pretrained backbone is trained here.
        "RICHFT_DATA_DIR": str(data_dir),  # Not ~/tensorflow_datasets.
        "XLA_FLAGS": xla_flags,
    }
    for key in list(os.environ):  # The notebook's defaults: no other RICHFT_* override.
        if key.startswith("RICHFT_") or key == "PYTHONPATH":  # No repo on the kernel's path.
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # The kernel inherits the environment.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(content)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    # Cloned (shallow) outside the repository, and the rest ran with the clone's package.
    assert f"cloned {bare.as_uri()} into {clone}" in text
    assert f"repository: {clone}" in text
    assert (clone / ".git" / "shallow").is_file()
    assert f"richft_jax: {clone / 'richft_jax'} " in text

    # The Colab install: the package without its dependencies, then only what Colab lacks,
    # with Colab's own JAX and TensorFlow pinned; no pip command actually ran.
    commands = [shlex.split(line) for line in re.findall(r"^dry run: (.*)$", text, re.M)]
    assert "\n$ " not in text and len(commands) == 2
    package, dependencies = (c[c.index("install") + 1 :] for c in commands)
    assert package == ["-q", "--no-deps", "-e", str(clone)]
    names = requirement_names(dependencies)
    assert not set(names) & COLAB_SHIPS, names
    assert {"flax", "optax", "orbax-checkpoint", "ml-collections", "clu"} <= set(names)
    assert {"tensorflow-datasets", "mlxtend", "safetensors"} <= set(names)
    constraints = pathlib.Path(dependencies[dependencies.index("-c") + 1]).read_text().split()
    assert any(p.startswith("jax==") for p in constraints)
    assert any(p.startswith("tensorflow-cpu==") for p in constraints)  # This venv's TF.

    # The default (tiny) runs were trained, and every figure is drawn, with finite numbers.
    for run in ("workdirs/colab_tiny/demo_erm", "workdirs/colab_tiny/demo"):
        assert (clone / run / "summary.json").is_file()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == len(FIGURES)
    out = clone / "workdirs" / "linear_regime_out" / "tiny"
    written = {p.name for p in out.iterdir()}
    assert written == {f"{n}.{e}" for n in FIGURES for e in ("png", "json")} | {"summary.json"}
    for name in written:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            continue
        values = numbers(json.loads((out / name).read_text()))
        assert values and all(math.isfinite(v) for v in values), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"erm", "very_large_dropout"}
    assert "| erm |" in text and "agreement on 32 images:" in text
    # Runs and figures went under the clone's ignored workdirs/: the clone stays clean.
    status = ["git", "-C", str(clone), "status", "--porcelain"]
    assert subprocess.run(status, capture_output=True, text=True, check=True).stdout == ""
