"""The Colab notebook runs top to bottom the way a new Colab user meets it: in a fresh runtime
that has only what Colab ships (JAX, TensorFlow, NumPy... and the kernel; no richft_jax, none of
the packages Colab lacks), opened outside any clone. Its first cell clones the repository (this
checkout's working tree, served from a local bare repository through file://, shallow as from
GitHub), its install cell really runs pip (from the package index, as on Colab), then the demo's
default tiny runs are trained with the cloned package and every figure is drawn. Colab's own
packages must come out of the install exactly as they went in.

The runtime is tests/colab_runtime.py: a venv without --system-site-packages whose shipped
distributions are symlinks into this environment. The kernel is that venv's interpreter.
"""

import datetime
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import colab_runtime
import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "launch" / "colab_linear_regime.ipynb"
FIGURES = ("taylor_agreement", "taylor_trajectory", "interpolation", "linear_finetune")
# What Colab ships built for its runtime: the install cell must never ask pip for these, nor
# change them. This environment's tensorflow-cpu stands in for Colab's tensorflow.
COLAB_SHIPS = {
    "jax",
    "jaxlib",
    "tensorflow-cpu",
    "tensorboard",
    "numpy",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "pillow",
    "protobuf",
}
# The runtime also ships the kernel and pip; everything these require comes along.
RUNTIME_SHIPS = COLAB_SHIPS | {"ipykernel", "pip"}
# What the notebook must install: the project's requirements Colab lacks.
LACKS = {"flax", "optax", "orbax-checkpoint", "ml-collections", "clu", "tensorflow-datasets"}
LACKS |= {"mlxtend", "safetensors", "scikit-image", "google-cloud-storage"}


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
        names.append(colab_runtime.canonical(re.match(r"[A-Za-z0-9._-]+", a)[0]))
    return names


def cell_times(nb) -> str:
    """Seconds each executed code cell took (nbclient's timestamps), one line per cell."""

    def stamp(text):
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

    lines = []
    for c in nb.cells:
        t = c.metadata.get("execution", {})
        if "shell.execute_reply" in t:
            seconds = (stamp(t["shell.execute_reply"]) - stamp(t["iopub.execute_input"])).seconds
            lines.append(f"  {seconds:4d} s  {c.source.splitlines()[0][:70]}")
    return "\n".join(lines)


def serve_working_tree(bare: pathlib.Path) -> None:
    """A bare repository at `bare` whose default branch is one commit of this checkout's working
    tree (tracked and untracked files, .gitignore respected): the clone gets the code the rest of
    the suite tests, committed or not. Objects are written into `bare` only, never this
    checkout's .git, and its index is left alone (a temporary one is used)."""
    env = {
        **os.environ,
        "GIT_DIR": str(bare),
        "GIT_WORK_TREE": str(REPO),
        "GIT_INDEX_FILE": str(bare / "snapshot.index"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }

    def git(*args):
        done = subprocess.run(["git", *args], env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    init = ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare)]
    subprocess.run(init, capture_output=True, check=True)
    git("add", "--all")
    commit = git("commit-tree", git("write-tree"), "-m", "working tree")
    git("update-ref", "refs/heads/main", commit)


def test_notebook_runs_on_a_new_colab_runtime(tmp_path, pretraining_data_dir, monkeypatch):
    t0 = time.perf_counter()
    bare = tmp_path / "repo.git"
    serve_working_tree(bare)
    python = colab_runtime.create(tmp_path / "colab", RUNTIME_SHIPS)
    before = colab_runtime.inventory(python)
    shipped_dir = str(tmp_path / "colab" / "dist-packages")
    assert COLAB_SHIPS | {"ipykernel"} <= set(before)
    assert {where for _, where in before.values()} == {shipped_dir}  # Nothing else installed.
    assert not (LACKS | {"richft-jax"}) & set(before)
    probe = "import importlib.util as u; print([u.find_spec(m) for m in ('richft_jax', 'flax')])"
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "[None, None]", out  # Not even through an editable finder.

    content = tmp_path / "content"  # Colab's /content: no clone around it.
    content.mkdir()
    clone = content.resolve() / "repo"
    kernels = tmp_path / "jupyter" / "kernels" / "colab"  # The runtime's interpreter as kernel.
    kernels.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Colab stand-in", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec))
    xla_flags = " ".join(  # One CPU device, as a Colab CPU runtime has (not the tests' 8).
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
    )
    dev_bin = os.path.join(sys.prefix, "bin")  # This environment's: not on the runtime's PATH.
    path = [p for p in os.environ["PATH"].split(os.pathsep) if os.path.normpath(p) != dev_bin]
    env = {
        "COLAB_RELEASE_TAG": "test",  # What Colab's runtime sets: the notebook's Colab path.
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "PATH": os.pathsep.join([str(python.parent), *path]),
        "VIRTUAL_ENV": str(python.parent.parent),
        "RICHFT_REPO": bare.as_uri(),  # file://: `git clone --depth 1` is shallow, as from GitHub.
        "RICHFT_CACHE": str(tmp_path / "cache"),  # The tiny pretrained backbone is trained here.
        # Not ~/tensorflow_datasets: the session's digits and small letters (conftest.py).
        "RICHFT_DATA_DIR": str(pretraining_data_dir),
        "XLA_FLAGS": xla_flags,
    }
    for key in list(os.environ):  # The notebook's defaults: no other RICHFT_* override...
        if key.startswith("RICHFT_") or key in ("PYTHONPATH", "PYTHONHOME"):
            # ...but the test session's JAX compilation cache (conftest.py): a later run of
            # this test loads what the notebook compiled, most of its time on a CPU.
            if key != "RICHFT_COMPILATION_CACHE":
                monkeypatch.delenv(key)
    monkeypatch.delenv("NPROC", raising=False)  # The pool of the 8 simulated devices' (xla_cpu).
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # The kernel inherits the environment.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t1 = time.perf_counter()
    NotebookClient(
        nb, timeout=600, kernel_name="colab", resources={"metadata": {"path": str(content)}}
    ).execute()
    t2 = time.perf_counter()
    nbformat.write(nb, tmp_path / "executed.ipynb")  # To read when an assertion below fails.
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # pip's colours.
    print(f"runtime and repository {t1 - t0:.1f} s, notebook {t2 - t1:.1f} s; per cell:")
    print(cell_times(nb))  # Where the time goes (shown with -s, or when the test fails).

    # Cloned (shallow) outside the repository, and the rest ran with the clone's package.
    assert f"cloned {bare.as_uri()} into {clone}" in text
    assert f"repository: {clone}" in text
    assert (clone / ".git" / "shallow").is_file()
    assert f"richft_jax: {clone / 'richft_jax'} " in text

    # The Colab install: the package without its dependencies, then only what Colab lacks, with
    # Colab's own packages pinned; both really ran.
    commands = [shlex.split(line) for line in re.findall(r"^\$ (.*)$", text, re.M)]
    assert len(commands) == 2, text
    assert [c[:4] for c in commands] == [[str(python), "-m", "pip", "install"]] * 2
    package, dependencies = (c[c.index("install") + 1 :] for c in commands)
    assert package == ["-q", "--no-deps", "-e", str(clone)]
    names = requirement_names(dependencies)
    assert not set(names) & (COLAB_SHIPS | {"tensorflow"}), names
    assert LACKS <= set(names)
    constraints = pathlib.Path(dependencies[dependencies.index("-c") + 1]).read_text().split()
    pinned = dict(c.split("==") for c in constraints)
    assert {n: v for n, (v, _) in before.items() if n in COLAB_SHIPS} == pinned
    assert re.search(r"^Colab: True \| richft_jax installed: \d+\.\d+", text, re.M), text

    # Colab's packages (and all they require) unchanged: same versions, still the shipped files;
    # what Colab lacks was installed into the runtime; richft_jax is the clone, editable.
    after = colab_runtime.inventory(python)
    assert {n: after[n] for n in before} == before
    site_packages = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    assert {where for n, (_, where) in after.items() if n not in before} == {str(site_packages)}
    assert LACKS | {"richft-jax"} <= set(after)
    probe = "import richft_jax, flax, clu; print(richft_jax.__file__)"
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == str(clone / "richft_jax" / "__init__.py"), out

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
    assert re.search(r"^the notebook ran in \d+\.\d minutes$", text, re.M)
    # Runs and figures went under the clone's ignored workdirs/: the clone stays clean.
    status = ["git", "-C", str(clone), "status", "--porcelain"]
    assert subprocess.run(status, capture_output=True, text=True, check=True).stdout == ""
    shutil.rmtree(python.parent.parent)  # Passed: the runtime's ~0.5 GB of installs can go.
