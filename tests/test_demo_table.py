"""launch/demo_table.sh: JOBS=N reaches every launch/sweep.py call it makes as --jobs=N.

The script has no print mode, so `python` on its PATH is a stand-in that records each command
line and exits 0: the script's own argument handling runs, no sweep or report does."""

import os
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDER = '#!/usr/bin/env bash\nprintf "%q " "$@" >> "$RECORD"\necho >> "$RECORD"\n'


def demo_table_calls(
    tmp_path: pathlib.Path, jobs: str | None, backbone: str | None = None
) -> list[list[str]]:
    """The argument lists of every `python` command demo_table.sh runs, with JOBS=`jobs`
    (and BACKBONE=`backbone`)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(RECORDER)
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["RECORD"] = str(record)
    env.pop("JOBS", None)
    env.pop("BACKBONE", None)
    if jobs is not None:
        env["JOBS"] = jobs
    if backbone is not None:
        env["BACKBONE"] = backbone
    done = subprocess.run(
        ["bash", "launch/demo_table.sh", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize(("jobs", "flag"), [("3", "--jobs=3"), (None, "--jobs=1")])
def test_jobs_reaches_every_sweep_call(tmp_path, jobs, flag):
    calls = demo_table_calls(tmp_path, jobs)
    sweeps = [c for c in calls if c[0] == "launch/sweep.py"]
    assert len(sweeps) == 3, calls  # main, companions, noise_baseline: every part.
    for call in sweeps:
        assert [a for a in call if a.startswith("--jobs")] == [flag], call
    assert calls[-1][:3] == ["-m", "richft_jax.report", str(tmp_path / "out")]  # Then the report.


def test_backbone_reaches_every_sweep_call_as_an_absolute_path(tmp_path):
    sweeps = [c for c in demo_table_calls(tmp_path, None) if c[0] == "launch/sweep.py"]
    assert not [a for c in sweeps for a in c if a.startswith("--set")]  # The configs' own.
    file = tmp_path / "b.msgpack"
    (tmp_path / "with").mkdir()
    calls = demo_table_calls(tmp_path / "with", None, os.path.relpath(file, ROOT))
    sweeps = [c for c in calls if c[0] == "launch/sweep.py"]
    assert len(sweeps) == 3
    for call in sweeps:
        assert [a for a in call if a.startswith("--set")] == [f"--set=pretrained.path={file}"]
