"""benchmarks/first_run.py's report of a demo run (not the runs: those take minutes): the train
steps' own time and the two lines printed from a made-up run's summary timings."""

import argparse
import os
import subprocess
import sys

import pytest

from benchmarks import first_run

TIMINGS = {  # A summary.json's timings_s: the phases add up to the total.
    "train_steps": 95.0,
    "input": 5.0,
    "eval": 20.0,
    "startup": 12.0,
    "data": 3.5,
    "other": 2.0,
    "total": 137.5,
    "compile_within": 6.3,
}


def test_the_train_steps_own_time_is_the_steps_and_the_input_waits_between_them():
    assert first_run.steps_seconds(TIMINGS) == 100.0
    assert first_run.steps_seconds({"train_steps": 80.0}) == 80.0  # No input waits recorded.


def test_run_lines_print_the_run_and_where_its_time_went():
    run = {
        "wall_s": 150.04,
        "pretrained_here": False,
        "backbone_sha256": "0123456789abcdef",
        "ood": 0.49,
        "load_average": 0.12,
        "timings_s": TIMINGS,
        "wall_over_steps": round(150.04 / first_run.steps_seconds(TIMINGS), 2),
    }
    assert first_run.run_lines("first", run, 2).splitlines() == [
        "demo first run: 150.0 s wall; pretrained here: no; backbone sha256 0123456789ab...; "
        "OOD 49.0% (load average 0.12 on 2 CPUs)",
        "  time 137.5 s = train steps 95.0 + input 5.0 + eval 20.0 + startup 12.0 + data 3.5 + "
        "other 2.0 (JAX compilation within them: 6.3 s); wall / train steps 1.50",
    ]
    # A run that pretrained (it should not: the backbone ships) and recorded no backbone.
    other = {**run, "pretrained_here": True, "backbone_sha256": None}
    first = first_run.run_lines("cached", other, 2).splitlines()[0]
    assert "demo cached run:" in first
    assert "pretrained here: yes; backbone sha256 none...;" in first


def test_ab_variants_are_named_flag_lists_and_anything_else_is_refused_by_name():
    parser = argparse.ArgumentParser(prog="first_run")
    assert first_run.ab_variants(parser, None) == {"cached": []}
    text = '{"vmapped": ["--config.data.eval_models_per_pass=2"], "default": []}'
    assert first_run.ab_variants(parser, text) == {
        "vmapped": ["--config.data.eval_models_per_pass=2"],
        "default": [],
    }
    for bad in ("nope", "{}", '{"first": []}', '{"a": "--x=1"}', '["a"]', '{"a": [1]}'):
        with pytest.raises(SystemExit):
            first_run.ab_variants(parser, bad)


def test_a_pythonpath_runs_the_first_variant_on_those_packages(tmp_path, monkeypatch):
    """--a_pythonpath: the first variant's processes find that folder's packages first (an A/B
    of a dependency's version); the caches' variables never reach any run."""
    parser = argparse.ArgumentParser(prog="first_run")
    assert first_run.ab_variants(parser, None, None, "/p") == {"with /p": [], "this tree": []}
    both = first_run.ab_variants(parser, None, "HEAD~1", "/p")
    assert both == {"at HEAD~1 with /p": [], "this tree": []}
    monkeypatch.setenv("PYTHONPATH", "/already")
    monkeypatch.setenv("RICHFT_CACHE", "/cache")
    env = first_run.run_env(tmp_path, "/p")
    assert env["PYTHONPATH"] == os.pathsep.join(["/p", "/already"])
    assert env["HOME"] == str(tmp_path) and "RICHFT_CACHE" not in env
    assert first_run.run_env(tmp_path)["PYTHONPATH"] == "/already"
    monkeypatch.delenv("PYTHONPATH")
    assert first_run.run_env(tmp_path, "/p")["PYTHONPATH"] == "/p"


def test_a_pythonpath_that_is_not_a_folder_is_refused_before_any_run(tmp_path):
    missing = tmp_path / "no_such_dir"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.first_run", f"--a_pythonpath={missing}"],
        cwd=first_run.REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"--a_pythonpath={missing} is not a folder" in done.stderr


def test_a_rev_runs_the_revisions_code_against_this_trees(tmp_path):
    """--a_rev alone: two variants, the revision's code first; its checkout is a worktree at
    that revision, and a revision git does not know is refused by name."""
    parser = argparse.ArgumentParser(prog="first_run")
    assert first_run.ab_variants(parser, None, "HEAD~1") == {"at HEAD~1": [], "this tree": []}

    def head(repo):
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout

    where = first_run.worktree("HEAD", tmp_path / "a_rev")
    try:
        assert head(where) == head(first_run.REPO)
        assert (where / "richft_jax" / "main.py").is_file()
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", where], cwd=first_run.REPO)
    with pytest.raises(SystemExit, match="--a_rev=no-such-revision: git cannot check it out"):
        first_run.worktree("no-such-revision", tmp_path / "bad")
