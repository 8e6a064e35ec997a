"""Hostile and broken input: each gets a clear error naming the bad thing (or a logged skip),
and nothing a run already wrote is lost. (Unknown/mistyped config keys, a pretrained
checkpoint of another model, NaN losses and a busy workdir are in test_bad_input.py.)"""

import ast
import contextlib
import errno
import os
import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging
from conftest import parse_python

from richft_jax import checkpoints, config_lib, results, train
from richft_jax import workdir as workdir_lib
from richft_jax.data import pipeline
from richft_jax.models.classifier import Classifier
from richft_jax.models.demo import SmallResNet

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny(data_dir, **overrides):
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = ""  # A random backbone: no pretraining needed.
    c.data.eval_max_examples = 32
    c.data.eval_batch_size = 32
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


# ----------------------------------------------------------------------------- empty domain
def test_an_empty_domain_or_split_is_named(data_dir, tmp_path, monkeypatch):
    real = pipeline.sources.load_arrays(  # Prepared once (shared session data dir).
        "digits_domains", data_dir=str(data_dir)
    )

    def with_domain(size):
        arrays = dict(real)
        images, labels = arrays["digits"]
        arrays["digits"] = (images[:size], labels[:size])
        return lambda *a, **k: arrays

    monkeypatch.setattr(pipeline.sources, "load_arrays", with_domain(0))
    with pytest.raises(ValueError, match="domain 'digits' is empty"):
        train.train_and_evaluate(tiny(data_dir), str(tmp_path / "run"))
    # Two examples: an 80/20 split leaves the out split empty (evaluation would divide by 0).
    monkeypatch.setattr(pipeline.sources, "load_arrays", with_domain(2))
    with pytest.raises(ValueError, match="domain 'digits' has 2 examples, too few.*holdout"):
        pipeline.load_domains("digits_domains", "syn", 0, data_dir=str(data_dir))
    assert not (tmp_path / "run" / results.RESULTS).exists()


# ----------------------------------------------------------------------------- results.jsonl
def test_rows_appended_after_a_truncated_line_are_kept(tmp_path, monkeypatch):
    first = [{"step": 1, "accuracy": 0.5}]
    results.append_rows(str(tmp_path), first)
    with open(tmp_path / results.RESULTS, "a") as f:
        f.write('{"step": 2, "accur')  # A crash cut this write short.
    later = [{"step": 2, "accuracy": 0.6}, {"step": 3, "accuracy": 0.7}]
    results.append_rows(str(tmp_path), later)  # The resumed run appends.
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    assert results.read_rows(tmp_path) == first + later
    assert len(warnings) == 1 and f"{results.RESULTS}:2 is not a whole JSON line" in warnings[0]


# ----------------------------------------------------------------------------- another model
def test_resuming_from_another_models_checkpoint_names_the_parameter(data_dir, tmp_path):
    workdir = tmp_path / "run"
    other = Classifier(SmallResNet(widths=(8, 8, 16, 16), feature_dim=32, stem_stride=2), 10)
    variables = other.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    mngr = checkpoints.manager(workdir / checkpoints.LATEST)
    checkpoints.save(mngr, 5, {"params": variables["params"], "step": jnp.int32(5)})
    mngr.wait_until_finished()
    mngr.close()
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(tiny(data_dir), str(workdir))  # This model: feature_dim 64.
    message = str(err.value)
    assert f"Cannot resume from {workdir / 'checkpoints' / '5'}" in message
    assert "parameter 'params/backbone/widen_bn/bias' has shape (32,)" in message
    assert "the model expects (64,)" in message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["5"]  # Left as it was.
    assert not (workdir / results.RESULTS).exists()


# ----------------------------------------------------------------------------- full / RO disk
@contextlib.contextmanager
def small_tmpfs(path: pathlib.Path, size: str):
    """A tmpfs of `size` at `path` (we run as root in CI; elsewhere the test says why not)."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"needs permission to mount a small tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: pathlib.Path, leave: int) -> None:
    """Writes a filler file until at most `leave` bytes are free on path's filesystem."""
    with open(path / "filler", "wb") as f:
        chunk = b"\0" * 65536
        while True:
            st = os.statvfs(path)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(chunk[: max(4096, min(len(chunk), free - leave))])
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break


def snapshot(workdir: pathlib.Path):
    tree = checkpoints.restore_state_tree(workdir)
    return results.read_rows(workdir), int(tree["step"]), jax.tree.leaves(tree["params"])


def assert_intact(workdir, before):
    rows, step, leaves = snapshot(workdir)
    assert rows[: len(before[0])] == before[0]  # Every row written before is still there.
    assert step == before[1]
    for x, y in zip(leaves, before[2], strict=True):
        np.testing.assert_array_equal(x, y)


# Orbax's failed writes on the full disk leave TensorStore writes in flight whose completion
# callbacks later reach Orbax's event loop after it closed (asyncio's "Event loop is closed",
# raised inside a C callback, so pytest reports it as unraisable, in about half the runs).
# That one message is expected here; any other unraisable exception still shows.
@pytest.mark.filterwarnings(
    "ignore:(?s)Exception ignored in.*Event loop is closed:pytest.PytestUnraisableExceptionWarning"
)
def test_full_and_read_only_disks_stop_clearly_and_lose_nothing(data_dir, tmp_path):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        workdir = disk / "run"
        steps = {"num_steps": 6, "checkpoint_every": 3, "eval_every": 3, "log_every": 3}
        train.train_and_evaluate(tiny(data_dir, **steps), str(workdir))
        before = snapshot(workdir)
        assert before[1] == 6 and len(before[0]) == 16

        # Full disk: resume for 6 more steps with no room left.
        fill(disk, leave=0)
        more = dict(steps, num_steps=12)
        with pytest.raises(OSError, match=f"workdir '{workdir}' is not writable.*No space left"):
            train.train_and_evaluate(tiny(data_dir, **more), str(workdir))
        assert_intact(workdir, before)

        # Nearly full: room for the config and results rows, not for a checkpoint.
        (disk / "filler").unlink()
        fill(disk, leave=96 * 1024)
        with pytest.raises(Exception, match="(?i)no space left") as err:
            train.train_and_evaluate(tiny(data_dir, **more), str(workdir))
        logging.info("Nearly full disk: %r", err.value)
        assert_intact(workdir, before)
        assert not (workdir / results.SUMMARY).read_text().count('"num_steps": 12')
        (disk / "filler").unlink()

        # Read-only disk (a read-only remount: as root, chmod would not stop writes), holding a
        # copy of the run: the failed save above may keep files open on `disk`, and a busy
        # filesystem cannot be remounted.
        with small_tmpfs(tmp_path / "disk_ro", "8m") as ro_disk:
            ro_run = ro_disk / "run"
            shutil.copytree(workdir, ro_run)
            subprocess.run(["mount", "-o", "remount,ro", str(ro_disk)], check=True)
            with pytest.raises(OSError, match=f"workdir '{ro_run}' is not writable.*Read-only"):
                train.train_and_evaluate(tiny(data_dir, **more), str(ro_run))
            assert_intact(ro_run, before)

        # Space back: the same command resumes and finishes.
        summary = train.train_and_evaluate(tiny(data_dir, **more), str(workdir))
        assert summary["num_steps"] == 12
        assert int(checkpoints.restore_state_tree(workdir)["step"]) == 12


# ----------------------------------------------------------------------------- no unpickling
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def unpickling_sites(source: str) -> list[str]:
    """Imports of pickling modules, torch.load, pandas.read_pickle, and numpy loads that do
    not pass allow_pickle=False."""
    found = []
    for node in ast.walk(parse_python(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [f"import {n}" for n in names if n.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            call = f"{owner}.{node.func.attr}"
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if node.func.attr == "read_pickle" or call == "torch.load":
                found.append(call)
            elif call in ("np.load", "numpy.load") and keywords.get("allow_pickle") != "False":
                found.append(f"{call} without allow_pickle=False")
    return found


def test_no_code_path_unpickles_anything():
    # The checker itself catches what it should.
    assert unpickling_sites("import pickle\ntorch.load(f)\nnp.load(p)\n") == [
        "import pickle",
        "torch.load",
        "np.load without allow_pickle=False",
    ]
    assert unpickling_sites("np.load(p, allow_pickle=False)\nmsg = 'torch.load(f)'\n") == []
    files = [
        p
        for folder in ("richft_jax", "configs", "launch")
        for p in sorted((REPO / folder).rglob("*.py"))
    ]
    assert len(files) > 20
    offenders = {
        str(p.relative_to(REPO)): sites
        for p in files
        if (sites := unpickling_sites(p.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_a_bucket_url_as_workdir_stays_a_url_and_is_never_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(workdir_lib.make_workdir("gs://bkt/run")) == "gs://bkt/run"  # Nothing to create.
    with pytest.raises(ValueError, match="--workdir='https://h/run': https:// is not a storage"):
        workdir_lib.make_workdir("https://h/run")
    assert list(tmp_path.iterdir()) == []  # Not silently created as a local folder "gs:".


def test_a_web_url_as_pretrained_path_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    # A gs:// URL is read as is (never a local folder "gs:/bucket/x", as it once was); a URL
    # that is not a storage system is refused naming the key.
    monkeypatch.chdir(tmp_path)
    c = tiny(str(tmp_path / "data"), **{"pretrained.path": "https://host/x"})
    with pytest.raises(ValueError, match="config.pretrained.path='https://host/x'"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert list(tmp_path.iterdir()) == []  # No run, no data, no local "https:" folder.
