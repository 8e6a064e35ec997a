"""One tiny end-to-end run of the real entry point: data build, pretraining, fine-tuning with
feature dropout, checkpoints, per-domain evaluation, results; determinism and resume."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from cli import demo_command, env_with_devices

from richft_jax import checkpoints, combine, config_lib, results, run, train
from richft_jax.data import letters, sources

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(data_dir, pretrain_dir, **overrides):
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = str(pretrain_dir)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def cli_command(dirs, workdir, *extra):
    """The real CLI on the tiny demo config, with the test's data and pretrained dirs."""
    return demo_command(
        workdir, dirs["data"], f"--config.pretrained.path={dirs['pretrain']}", *extra
    )


# The letters splits the first run pretrains on, shrunk: the tiny pretraining draws 30 x 64
# images, so 2,080 are as many as it sees of the 40,000 (which take a minute to render).
SMALL_LETTERS = {"train": 2080, "test": 520}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, data_dir):
    """The module's data dir: the session's digits (linked) and its own small letters."""
    root = tmp_path_factory.mktemp("e2e")
    sources.load_arrays("digits_domains", data_dir=str(data_dir))  # Built once per session.
    data = root / "data"
    data.mkdir()
    (data / "digits_domains").symlink_to(pathlib.Path(data_dir) / "digits_domains")
    return {"data": data, "pretrain": root / "pretrain", "root": root}


@pytest.fixture(scope="module")
def first_run(dirs):
    workdir = dirs["root"] / "run_a"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(letters, "SPLIT_SIZES", SMALL_LETTERS)
        config = tiny_config(dirs["data"], dirs["pretrain"])
        summary = train.train_and_evaluate(config, str(workdir))
    return workdir, summary


def test_first_run_pretrains_then_fine_tunes(first_run, dirs):
    workdir, summary = first_run
    # The missing backbone was pretrained first, into the configured path.
    assert (dirs["pretrain"] / "results.jsonl").exists()
    pre_rows = results.read_rows(dirs["pretrain"])
    assert {r["domain"] for r in pre_rows} == {"train", "test"}
    # ...on the letters, built on the way into the run's data dir.
    built = sources.load_arrays("letters", data_dir=str(dirs["data"]))
    assert {k: len(v[1]) for k, v in built.items()} == SMALL_LETTERS
    rows = results.read_rows(workdir)
    # 2 evaluations (steps 10, 20) x 4 domains x 2 splits.
    assert len(rows) == 16
    assert {r["step"] for r in rows} == {10, 20}
    assert {r["domain"] for r in rows} == {"mnist", "mnist_m", "digits", "syn"}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0
        assert r["is_test_domain"] == (r["domain"] == "syn")
        assert r["method"] == "very_large_dropout" and r["dropout_rate"] == pytest.approx(0.9)
        assert r["test_domains"] == ["syn"] and r["config_name"] == "demo_tiny"
        assert {"seed", "trial_seed", "split"} <= set(r)
    saved = json.loads((workdir / "summary.json").read_text())
    assert saved["selected"]["step"] in (10, 20)
    assert saved["selected"] == summary["selected"]
    assert 0.0 < saved["selected"]["id_accuracy"] <= 1.0
    # Where the time went: the phases add up to the total; pretraining is one of them here.
    # In-process (not started by richft_jax.main) there is no startup: total is the run's own.
    t = saved["timings_s"]
    assert {"pretrain", "data", "init", "setup", "train_steps", "eval", "checkpoints"} <= set(t)
    assert "teardown" in t
    assert "startup" not in t
    parts = sum(v for k, v in t.items() if k not in ("total", "compile_within"))
    assert parts == pytest.approx(t["total"], abs=0.3)
    assert min(t["pretrain"], t["train_steps"], t["eval"], t["compile_within"]) > 0
    assert (workdir / "config.json").exists()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
    assert os.listdir(workdir / "best") == [str(saved["selected"]["step"])]


def test_same_seed_gives_identical_results(first_run, dirs):
    workdir, _ = first_run
    again = dirs["root"] / "run_b"
    train.train_and_evaluate(tiny_config(dirs["data"], dirs["pretrain"]), str(again))
    a = [
        (r["step"], r["domain"], r["split"], r["accuracy"], r["loss"])
        for r in results.read_rows(workdir)
    ]
    b = [
        (r["step"], r["domain"], r["split"], r["accuracy"], r["loss"])
        for r in results.read_rows(again)
    ]
    assert a == b


@pytest.fixture(scope="module")
def second_run(first_run, dirs):
    other = dirs["root"] / "run_seed1"
    train.train_and_evaluate(tiny_config(dirs["data"], dirs["pretrain"], seed=1), str(other))
    return other


def test_other_seed_differs(first_run, second_run):
    workdir, _ = first_run
    other = second_run
    a = [r["loss"] for r in results.read_rows(workdir)]
    b = [r["loss"] for r in results.read_rows(other)]
    assert a != b


def _accuracies(rows, method, **match):
    return {
        (r["domain"], r["split"]): r["accuracy"]
        for r in rows
        if r["method"] == method and all(r.get(k) == v for k, v in match.items())
    }


def test_combine_restores_runs_and_evaluates_soups_and_ensembles(first_run, second_run, dirs):
    run_a, _ = first_run
    c = config_lib.load_config_file("configs/combine.py")
    c.checkpoints = f"{run_a},{second_run}"
    c.data_dir = str(dirs["data"])
    c.combinations = ",".join(combine.COMBINATIONS)
    out = dirs["root"] / "combined"
    summary = combine.combine_and_evaluate(c, str(out))
    rows = results.read_rows(out)
    assert {r["method"] for r in rows} == set(combine.COMBINATIONS)
    # The restored best checkpoint of run A scores exactly what run A logged at that step.
    selected = json.loads((run_a / "summary.json").read_text())["selected"]["step"]
    logged = {
        (r["domain"], r["split"]): r["accuracy"]
        for r in results.read_rows(run_a)
        if r["step"] == selected
    }
    assert _accuracies(rows, "individual", member=str(run_a)) == pytest.approx(logged, abs=1e-6)
    # Interpolation endpoints are the two runs themselves.
    assert _accuracies(rows, "interpolation", alpha=0.0) == pytest.approx(
        _accuracies(rows, "individual", member=str(run_a)), abs=1e-6
    )
    assert _accuracies(rows, "interpolation", alpha=1.0) == pytest.approx(
        _accuracies(rows, "individual", member=str(second_run)), abs=1e-6
    )
    assert set(summary) >= {"uniform_soup", "greedy_soup", "ensemble_sum_logits"}
    greedy = [r for r in rows if r["method"] == "greedy_soup"]
    assert len(greedy) == 8 and 1 <= len(greedy[0]["members"]) <= 2


def test_combining_a_run_with_itself_changes_nothing(first_run, dirs):
    run_a, _ = first_run
    c = config_lib.load_config_file("configs/combine.py")
    c.checkpoints = f"{run_a},{run_a}"
    c.data_dir = str(dirs["data"])
    out = dirs["root"] / "self_combined"
    combine.combine_and_evaluate(c, str(out))
    rows = results.read_rows(out)
    single = _accuracies(rows, "individual", member=str(run_a))
    for method in ("uniform_soup", "greedy_soup", "ensemble_sum_logits", "ensemble_mean_probs"):
        assert _accuracies(rows, method) == pytest.approx(single, abs=1e-6), method


def test_moving_average_is_kept_in_the_state_and_evaluated(first_run, dirs):
    workdir = dirs["root"] / "run_ma"
    c = tiny_config(dirs["data"], dirs["pretrain"], moving_average_start=5)
    summary = train.train_and_evaluate(c, str(workdir))
    rows = results.read_rows(workdir)
    ma = [r for r in rows if r["method"] == "very_large_dropout+moving_average"]
    model = [r for r in rows if r["method"] == "very_large_dropout"]
    assert len(ma) == len(model) == 16
    # The model's own rows are those of the run without averaging: averaging changes nothing else.
    base = results.read_rows(first_run[0])
    assert [(r["step"], r["accuracy"]) for r in model] == [(r["step"], r["accuracy"]) for r in base]
    assert [r["loss"] for r in ma] != [r["loss"] for r in model]
    assert summary["moving_average"]["selected"]["step"] in (10, 20)
    tree = checkpoints.restore_state_tree(workdir)
    average = tree["extras"]["moving_average"]
    assert average["head"]["kernel"].shape == tree["params"]["head"]["kernel"].shape


def test_restore_from_a_relative_path(first_run, monkeypatch):
    run_a, _ = first_run
    monkeypatch.chdir(run_a.parent)
    tree = checkpoints.restore_state_tree(pathlib.Path(run_a.name, "checkpoints", "10"))
    absolute = checkpoints.restore_state_tree(run_a / "checkpoints" / "10")
    np.testing.assert_array_equal(
        tree["params"]["head"]["kernel"], absolute["params"]["head"]["kernel"]
    )


def test_combine_checkpoints_along_one_run(first_run, dirs):
    run_a, _ = first_run
    c = config_lib.load_config_file("configs/combine.py")
    c.checkpoints = f"{run_a}/checkpoints/10,{run_a}/checkpoints/20"
    c.data_dir = str(dirs["data"])
    c.combinations = "individual,ensemble_sum_logits"
    c.method_prefix = "erm+"
    out = dirs["root"] / "along_run"
    combine.combine_and_evaluate(c, str(out))
    rows = results.read_rows(out)
    assert {r["method"] for r in rows} == {"erm+individual", "erm+ensemble_sum_logits"}
    logged = {
        (r["domain"], r["split"]): r["accuracy"]
        for r in results.read_rows(run_a)
        if r["step"] == 10
    }
    step10 = _accuracies(rows, "erm+individual", member=f"{run_a}/checkpoints/10")
    assert step10 == pytest.approx(logged, abs=1e-6)
    assert len(_accuracies(rows, "erm+ensemble_sum_logits")) == 8


# The SIGTERM run's length: the signal comes at step 5, this leaves it 15 steps to arrive before
# the end (over a second: a tiny step takes ≈ 0.1 s on jax.distributed's CPU collectives, gloo),
# and the rerun trains the rest.
SIGTERM_STEPS = 20
# Its simulated devices: two (not the tests' eight) are a mesh to shard over, and gloo's
# collectives and start-up grow with the devices (a 20-step run 10.1 s with 2, 15.2 s with 8).
SIGTERM_DEVICES = 2


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(first_run, dirs):
    """SIGTERM once the first progress line is out (step 5 of SIGTERM_STEPS): the run saves where
    it is and stops; the same command resumes there and finishes. Both through the multi-host entry
    path (jax.distributed, a localhost coordinator) with one process. (Kill -9 and rerun:
    test_preemption.py; SIGTERM without jax.distributed: test_gcs.py; two processes against
    one: test_distributed.py.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = dirs["root"] / "run_sigterm"
    cmd = cli_command(
        dirs,
        workdir,
        f"--config.num_steps={SIGTERM_STEPS}",
        f"--config.checkpoint_every={SIGTERM_STEPS}",
        f"--config.eval_every={SIGTERM_STEPS}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=1",
        "--process_id=0",
    )
    env = env_with_devices(SIGTERM_DEVICES)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.time() + 300
    first = f"] step 5/{SIGTERM_STEPS} "
    while not any(first in line for line in lines) and time.time() < deadline:
        assert proc.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    reader.join()
    err = "".join(lines)
    assert proc.returncode == 0, err[-3000:]
    devices = f"{SIGTERM_DEVICES} local / {SIGTERM_DEVICES} global devices."
    assert f"Process 0 of 1; {devices}" in err
    assert "SIGTERM: saved a checkpoint at step" in err
    saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert len(saved) == 1 and 5 <= saved[0] < SIGTERM_STEPS, saved
    assert f"SIGTERM: saved a checkpoint at step {saved[0]} " in err
    assert not (workdir / "summary.json").exists()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Process 0 of 1; {devices}" in done.stderr
    assert f"Resumed from step {saved[0]}" in done.stderr
    assert json.loads((workdir / "summary.json").read_text())["num_steps"] == SIGTERM_STEPS


# The probe's C grid here (config.lp_c_grid): 3 fits instead of the default grid's 10.
LP_C_GRID = (1e-3, 1e-1, 10.0)


def test_lp_ft_logs_the_linear_probe_at_step_0_and_starts_from_its_head(first_run, dirs):
    """With a zero learning rate fine-tuning never moves: the LP-FT rows after its steps equal
    the LP rows of step 0 on every split, so its first step starts from the probe's head; and
    the run builder's θ0 (what the analyses start from) is that state, probe head included
    (the probe fitted again from config.json, its C grid with it).
    (The probe's solver against scikit-learn, the grid setting: test_lpft.py.)"""
    workdir = dirs["root"] / "run_lpft"
    c = config_lib.load_config_file("configs/demo_lpft.py:tiny")
    c.data.data_dir = str(dirs["data"])
    c.pretrained.path = str(dirs["pretrain"])
    c.optim.lr = 0.0
    c.lp_c_grid = LP_C_GRID
    train.train_and_evaluate(c, str(workdir))
    assert json.loads((workdir / "config.json").read_text())["lp_c_grid"] == list(LP_C_GRID)
    rows = results.read_rows(workdir)
    lp = [r for r in rows if r["method"] == "lp"]
    ft = [r for r in rows if r["method"] == "lp_ft"]
    assert {r["step"] for r in lp} == {0} and len(lp) == 8
    assert {r["step"] for r in ft} == {10, 20} and len(ft) == 16
    key = lambda r: (r["domain"], r["split"])  # noqa: E731
    scores = {key(r): (r["accuracy"], r["loss"]) for r in lp}
    for r in ft:
        assert (r["accuracy"], r["loss"]) == pytest.approx(scores[key(r)], rel=1e-5), key(r)
    # The probe is a trained classifier on the training domains (chance is 0.1).
    id_lp = np.mean([r["accuracy"] for r in lp if not r["is_test_domain"] and r["split"] == "out"])
    assert id_lp > 0.3
    built = run.from_workdir(str(workdir), "latest")
    theta0 = run.init_variables(built.config, built.model, built.data)
    flat = jax.tree_util.tree_flatten_with_path(theta0)[0]
    assert len(flat) == len(jax.tree.leaves(built.variables))
    for (path, a), b in zip(flat, jax.tree.leaves(built.variables), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
