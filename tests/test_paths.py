"""The one path layer: a storage URL stays a URL (never a local folder), other URLs are
refused naming the input, local paths are absolute with ~ expanded, text writes are atomic."""

import os

import orbax.checkpoint as ocp
import pytest
from etils import epath

from richft_jax import paths


def test_a_bucket_url_stays_a_url_and_creates_nothing_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = paths.path("gs://bucket/run", "--workdir")
    assert str(p) == "gs://bucket/run" and os.fspath(p / "results.jsonl") == (
        "gs://bucket/run/results.jsonl"
    )
    assert paths.is_remote(p) and paths.scheme(p) == "gs"
    assert list(tmp_path.iterdir()) == []  # No ./gs: folder.


def test_a_url_that_is_not_storage_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"config.pretrained.path='https://x/y.npz': https://"):
        paths.path("https://x/y.npz", "config.pretrained.path")
    with pytest.raises(ValueError, match="--workdir is empty"):
        paths.path("", "--workdir")


def test_a_local_path_is_absolute_with_the_home_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert paths.path("~/runs/a") == epath.Path(tmp_path / "runs" / "a")
    assert paths.path("b") == epath.Path(tmp_path / "b")
    assert not paths.is_remote(paths.path("b"))


def test_write_text_atomic_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    paths.write_text_atomic(target, "old\n")
    paths.write_text_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_unwritable_looks_without_creating(tmp_path):
    assert paths.unwritable(str(tmp_path / "a" / "b")) is None
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert paths.unwritable(str(blocker / "run")) == (
        f"workdir '{blocker / 'run'}' is not writable: {blocker} is not a directory"
    )
    assert paths.unwritable("gs://bucket/run") is None  # Checked by the run's first write.
    assert "https://" in paths.unwritable("https://host/run")


def test_latest_step_dir_finds_the_steps_orbax_finds(tmp_path):
    layouts = {  # Directories under a run directory -> the step directory found, or None.
        "empty": ([], None),
        "steps": (
            ["checkpoints/5", "checkpoints/12", "checkpoints/30.orbax-checkpoint-tmp-99"],
            "checkpoints/12",
        ),
        "only a temporary step": (["checkpoints/7.orbax-checkpoint-tmp-1"], None),
        "steps at the top": (["3", "notes", "ckpt_8"], "ckpt_8"),
        "a step directory": (["state"], "."),
    }
    for name, (dirs, expected) in layouts.items():
        run_dir = tmp_path / name.replace(" ", "_")
        run_dir.mkdir()
        for d in dirs:
            (run_dir / d).mkdir(parents=True)
        for manager in (run_dir / paths.CHECKPOINTS, run_dir):  # The steps Orbax lists there.
            if manager.is_dir():
                steps = sorted(ocp.utils.checkpoint_steps(manager))
                assert sorted(paths.finished_step_dirs(epath.Path(manager))) == steps, name
        if expected is None:
            with pytest.raises(FileNotFoundError, match="No finished Orbax checkpoint under"):
                paths.latest_step_dir(run_dir)
        else:
            found = paths.latest_step_dir(run_dir)
            assert found == epath.Path(os.path.normpath(run_dir / expected)), name
