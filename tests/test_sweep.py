"""launch/sweep.py: grid expansion, workdir naming, skipping finished runs."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

spec = importlib.util.spec_from_file_location(
    "sweep", pathlib.Path(__file__).resolve().parents[1] / "launch" / "sweep.py"
)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_expand_is_the_full_product(tmp_path):
    runs = sweep.expand(
        ["configs/demo.py", "configs/demo_erm.py"],
        {"data.test_domains": ["mnist", "syn"], "dropout_rate": ["0.5", "0.9"]},
        [0, 1, 2],
        str(tmp_path),
    )
    assert len(runs) == 2 * 2 * 2 * 3
    workdirs = [w for w, _ in runs]
    assert len(set(workdirs)) == len(workdirs)
    w, cmd = runs[0]
    assert w == tmp_path / "demo" / "test_domains=mnist" / "dropout_rate=0.5" / "seed0"
    assert "--config.data.test_domains=mnist" in cmd and "--config.trial_seed=0" in cmd
    # Configs vary fastest, seeds slowest: a partial sweep holds whole comparisons.
    assert (
        workdirs[1] == tmp_path / "demo_erm" / "test_domains=mnist" / "dropout_rate=0.5" / "seed0"
    )
    assert all(w.name == "seed0" for w in workdirs[:8])


def test_run_mode_skips_finished_runs(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: calls.append(cmd))
    args = (str(tmp_path), ["configs/demo.py"], {}, [0, 1])
    done = tmp_path / "demo" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    sweep.run_sweep(*args)
    assert len(calls) == 1 and f"--workdir={tmp_path / 'demo' / 'seed1'}" in calls[0]
    assert "skip (finished)" in capsys.readouterr().out
    sweep.run_sweep(*args, mode="print")
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and printed[0].startswith(sys.executable)


def test_along_run_combines_the_checkpoints_each_run_saved(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: calls.append(cmd))
    run = tmp_path / "demo_erm" / "seed0"
    for step in (300, 1200, 600):
        (run / "checkpoints" / str(step)).mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "config.json").write_text('{"method": "erm"}')
    args = (str(tmp_path), ["configs/demo_erm.py"], {}, [0])
    sweep.run_sweep(*args, along_run="greedy_soup,ensemble_sum_logits")
    (cmd,) = calls  # The run itself is finished: only its combination runs.
    steps = ",".join(str(run / "checkpoints" / s) for s in ("300", "600", "1200"))
    assert f"--config.checkpoints={steps}" in cmd
    assert "--config.method_prefix=erm+" in cmd and f"--workdir={run / 'along_run'}" in cmd
    (run / "along_run").mkdir()
    (run / "along_run" / "summary.json").write_text("{}")
    sweep.run_sweep(*args, along_run="greedy_soup")
    assert len(calls) == 1  # Already combined: skipped.


def test_along_run_starts_at_the_configs_along_run_start(tmp_path, monkeypatch):
    # The paper configs ensemble / average the checkpoints from label 300 on (trainv2.py's
    # ensemble_start_iter = ma_start_iter); label 0 is saved but left out.
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: calls.append(cmd))
    run = tmp_path / "resnet50_dropout" / "seed0"
    for step in (0, 300, 600, 10000):
        (run / "checkpoints" / str(step)).mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "config.json").write_text('{"method": "very_large_dropout", "along_run_start": 300}')
    sweep.run_sweep(
        str(tmp_path), ["configs/resnet50_dropout.py"], {}, [0], along_run="greedy_soup"
    )
    (cmd,) = calls
    steps = ",".join(str(run / "checkpoints" / s) for s in ("300", "600", "10000"))
    assert f"--config.checkpoints={steps}" in cmd
    (run / "config.json").write_text('{"method": "m", "along_run_start": 10000}')
    with pytest.raises(SystemExit, match="along_run_start=10000"):
        sweep.along_run_command(run, "greedy_soup")


def test_config_args_name_the_workdir(tmp_path):
    runs = sweep.expand(
        ["configs/demo_rsl.py:noisy,erm", "configs/demo_rsl.py"], {}, [0], str(tmp_path)
    )
    assert [w for w, _ in runs] == [
        tmp_path / "demo_rsl_noisy_erm" / "seed0",
        tmp_path / "demo_rsl" / "seed0",
    ]
    assert "--config=configs/demo_rsl.py:noisy,erm" in runs[0][1]


def test_keep_records_copies_finished_runs_records_only(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = sweep_dir / "demo_rsl" / "test_domains=syn" / "seed0"
    running = sweep_dir / "demo_rsl" / "test_domains=mnist" / "seed0"
    for run in (done, running):
        (run / "checkpoints" / "150").mkdir(parents=True)
        (run / "checkpoints" / "150" / "state").write_text("weights")
        (run / "results.jsonl").write_text('{"step": 150}\n')
        (run / "config.json").write_text("{}")
    (done / "summary.json").write_text('{"selected": {}}')
    (done / "along_run").mkdir()
    (done / "along_run" / "summary.json").write_text("{}")
    (done / "along_run" / "results.jsonl").write_text("{}\n")
    (sweep_dir / "report").mkdir()
    (sweep_dir / "report" / "summary.json").write_text("{}")
    dest = tmp_path / "kept"
    script = pathlib.Path(__file__).resolve().parents[1] / "launch" / "keep_records.sh"
    out = subprocess.run(
        ["bash", str(script), str(sweep_dir), str(dest)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    run = "demo_rsl/test_domains=syn/seed0"
    assert kept == [
        f"{run}/along_run/results.jsonl",
        f"{run}/along_run/summary.json",
        f"{run}/config.json",
        f"{run}/results.jsonl",
        f"{run}/summary.json",
    ]
    assert (dest / run / "results.jsonl").read_text() == '{"step": 150}\n'
    assert "kept the records of 2 finished runs" in out.stdout


def _cmd(root, name, code):
    return [sys.executable, "-c", code, f"--workdir={root / name / 'seed0'}"]


REPORT = (  # A run's CPUs, start and end.
    "import os, time; t = time.time(); time.sleep(0.5); "
    "print(sorted(os.sched_getaffinity(0)), t, time.time())"
)


def _run_lines(capfd) -> list[str]:
    """The runs' output lines the sweep printed, each tagged "[rN/seed0 cpuK] ": capfd reads
    file descriptor 1, which a process left by an earlier test in this worker may also write."""
    out = capfd.readouterr().out.splitlines()
    return [ln for ln in out if re.match(r"\[r\d+/seed0 cpu[\d,]+\] ", ln)]


TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--jobs=2 needs 2 CPUs")


@TWO_CPUS
def test_jobs_run_at_once_each_on_its_own_cpus(tmp_path, monkeypatch, capfd):
    names = [f"r{i}" for i in range(5)]
    runs = [(tmp_path / n / "seed0", _cmd(tmp_path, n, REPORT)) for n in names]
    monkeypatch.setattr(sweep, "expand", lambda *a: runs)
    sweep.run_sweep(str(tmp_path), ["x"], {}, [0], jobs=2)
    lines = _run_lines(capfd)
    assert len(lines) == len(names), lines
    everything = sorted(os.sched_getaffinity(0))
    shares = {str(list(s)): s for s in sweep.cpu_shares(2)}
    seen = {}
    for line in lines:  # Every run pinned to one share, the first one too.
        tag, rest = line.split("] ", 1)  # "[r1/seed0 cpu0] [0] t0 t1"
        name, cpu = tag[1:].split()
        cpus, t0, t1 = rest.rsplit(" ", 2)
        assert cpus in shares and cpu == "cpu" + ",".join(map(str, shares[cpus]))
        seen[name] = (float(t0), float(t1))
    assert sorted(seen) == [f"{n}/seed0" for n in names]
    assert len(set.union(*map(set, shares.values()))) == len(everything)  # Disjoint, all.
    first_end = seen.pop("r0/seed0")[1]
    assert all(first_end <= t0 for t0, _ in seen.values())  # The first run alone.
    spans = sorted(seen.values())
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:], strict=False))  # At once.


@TWO_CPUS
def test_a_lone_unfinished_run_is_pinned_too(tmp_path, monkeypatch, capfd):
    runs = [(tmp_path / "r0" / "seed0", _cmd(tmp_path, "r0", REPORT))]
    monkeypatch.setattr(sweep, "expand", lambda *a: runs)
    sweep.run_sweep(str(tmp_path), ["x"], {}, [0], jobs=2)
    (line,) = _run_lines(capfd)
    assert line.split("] ", 1)[1].startswith(str(list(sweep.cpu_shares(2)[0])))


@TWO_CPUS
def test_a_failed_run_starts_no_more(tmp_path, monkeypatch):
    def touch(name):
        return f"import pathlib; pathlib.Path({str(tmp_path / name)!r}).touch()"

    codes = [touch("first"), "raise SystemExit(3)", "import time; time.sleep(1)"]
    codes += [touch(f"after{i}") for i in range(3)]
    runs = [(tmp_path / f"r{i}" / "seed0", _cmd(tmp_path, f"r{i}", c)) for i, c in enumerate(codes)]
    monkeypatch.setattr(sweep, "expand", lambda *a: runs)
    with pytest.raises(subprocess.CalledProcessError):
        sweep.run_sweep(str(tmp_path), ["x"], {}, [0], jobs=2)
    assert (tmp_path / "first").exists()
    assert not any((tmp_path / f"after{i}").exists() for i in range(3))


def test_jobs_beyond_the_cpus_are_refused_before_anything_runs():
    n = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=f"--jobs={n + 1}, but this process may use {n} CPUs"):
        sweep.cpu_shares(n + 1)
    assert sweep._check_jobs(1)


def test_set_overrides_every_run_and_names_no_workdir(tmp_path):
    fixed = sweep.parse_set(["pretrained.path=/tmp/b/x.msgpack", "num_steps=5"])
    assert fixed == {"pretrained.path": "/tmp/b/x.msgpack", "num_steps": "5"}
    runs = sweep.expand(
        ["configs/demo.py"], {"data.test_domains": ["mnist", "syn"]}, [0], str(tmp_path), fixed
    )
    assert [w for w, _ in runs] == [
        tmp_path / "demo" / f"test_domains={d}" / "seed0" for d in ("mnist", "syn")
    ]
    for _, cmd in runs:
        assert cmd[-2:] == ["--config.pretrained.path=/tmp/b/x.msgpack", "--config.num_steps=5"]
    with pytest.raises(ValueError, match="'num_steps' is not key=value"):
        sweep.parse_set(["num_steps"])


def test_a_key_both_set_and_on_the_grid_is_refused(tmp_path):
    script = pathlib.Path(sweep.__file__)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            f"--out={tmp_path}",
            "--config=configs/demo.py",
            "--grid=num_steps=5,6",
            "--set=num_steps=7",
            "--mode=print",
        ],
        capture_output=True,
        text=True,
        cwd=script.parents[1],
    )
    assert proc.returncode != 0 and "['num_steps'] given to both --grid and --set" in proc.stderr
    assert not list(tmp_path.iterdir())
