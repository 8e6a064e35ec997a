"""The rate curve (issue 16): configs/demo_scratch.py, launch/rate_curve.sh's plan, and the
report's Figure 3 with a pretrained and a from-scratch curve, from records written here in the
runs' own formats at the workdirs the script lists (nothing is trained)."""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

from richft_jax import config_lib, report, report_figures
from richft_jax import selection as sel

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "rate_curve.sh"
RATES = ("0", "0.5", "0.8", "0.9", "0.95", "0.99")
DOMAINS = ("mnist", "mnist_m", "digits", "syn")
FIXED = ("keep_checkpoints=1", "moving_average_start=None")
# What the from-scratch config may change from the demo's, and nothing else.
SCRATCH_CHANGES = {
    "config_name",
    "method",
    "dropout_rate",
    "pretrained.path",
    "pretrained.pretrain_config",
    "model.freeze_bn",
    "optim.lr",
    "optim.head_lr_factor",
}


def flat(tree: dict, prefix: str = "") -> dict:
    """A config's dict with dotted keys."""
    out = {}
    for k, v in tree.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("erm", [False, True])
def test_scratch_config_is_the_demo_from_random_init_with_batchnorm_trained(tiny, erm):
    arg = ",".join(["tiny"] * tiny + ["erm"] * erm)
    c = config_lib.load_config_file("configs/demo_scratch.py" + (f":{arg}" if arg else ""))
    assert c.pretrained.path is None and c.pretrained.pretrain_config is None
    assert c.model.freeze_bn is False
    assert c.optim.lr * c.optim.head_lr_factor == pytest.approx(3e-2)  # The demo's head's.
    assert c.dropout_rate == (0.0 if erm else 0.9)
    assert c.method == ("erm" if erm else "very_large_dropout") + "_scratch"
    assert c.config_name == "demo_scratch" + "_erm" * erm + "_tiny" * tiny
    demo = config_lib.load_config_file("demo" + (":tiny" if tiny else ""))
    mine, theirs = flat(c.to_dict()), flat(demo.to_dict())
    assert mine.keys() == theirs.keys()
    changed = {k for k in mine if mine[k] != theirs[k]}
    assert changed <= SCRATCH_CHANGES, changed  # Same data, model, steps and optimiser.
    assert {"pretrained.path", "model.freeze_bn", "method", "config_name"} <= changed
    # The report draws these methods as the from-scratch curve.
    suffix = report_figures.RATE_CURVES["from scratch"]
    assert c.method in {m + suffix for m in report_figures.RATE_METHODS}


def script(
    *args: str, mode: str = "print", path: str = "", timeout: int = 120
) -> subprocess.CompletedProcess:
    """launch/rate_curve.sh ARGS with MODE=`mode` (`path`: prepended to PATH)."""
    env = {**os.environ, "MODE": mode, "PATH": path + os.pathsep + os.environ["PATH"]}
    out = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def listed(stdout: str) -> list[list[str]]:
    """The printed commands (one a line), split."""
    return [shlex.split(line) for line in stdout.strip().splitlines()]


def workdir(cmd: list[str]) -> str:
    (w,) = [a.split("=", 1)[1] for a in cmd if a.startswith("--workdir=")]
    return w


def expected(out, seeds, domains, scratch_seeds, parts=("pretrained", "scratch")) -> list[str]:
    """Every run the plan must hold: rate 0 by the part's ERM config, the rest by its dropout
    config at each rate; × test domains × seeds (the part's)."""
    tail = "/".join(FIXED)
    configs = {"pretrained": ("demo_erm", "demo"), "scratch": ("demo_scratch_erm", "demo_scratch")}
    part_seeds = {"pretrained": seeds, "scratch": scratch_seeds}
    runs = []
    for part in parts:
        erm, dropout = configs[part]
        for s in part_seeds[part]:
            for d in domains:
                runs.append(f"{out}/{erm}/test_domains={d}/{tail}/seed{s}")
                for r in RATES[1:]:
                    runs.append(f"{out}/{dropout}/test_domains={d}/dropout_rate={r}/{tail}/seed{s}")
    return runs


@pytest.fixture(scope="module")
def default_plan(tmp_path_factory) -> tuple[pathlib.Path, list[list[str]]]:
    """(OUT_DIR, the commands) the script lists with its defaults: 3 seeds, all four domains,
    both parts."""
    out_dir = tmp_path_factory.mktemp("rate_curve")
    cmds = listed(script(str(out_dir)).stdout)
    assert not any(out_dir.iterdir())  # Listing runs nothing, reports nothing.
    return out_dir, cmds


def test_the_plan_is_rates_by_seeds_by_domains_per_part(default_plan):
    tmp_path, cmds = default_plan
    runs = [workdir(c) for c in cmds]
    assert len(runs) == len(set(runs)) == 6 * 4 * 3 + 6 * 4 * 2  # Scratch: the first 2 seeds.
    assert sorted(runs) == sorted(expected(tmp_path, (0, 1, 2), DOMAINS, (0, 1)))
    for cmd in cmds:
        assert "--config.keep_checkpoints=1" in cmd and "--config.moving_average_start=None" in cmd
        scratch = "/demo_scratch" in workdir(cmd)
        config = [a for a in cmd if a.startswith("--config=")]
        assert config[0].startswith("--config=configs/demo_scratch.py") == scratch
    # Seed by seed: every run of seed 0 (both parts) before the first of seed 1.
    seeds = [int(w.rsplit("seed", 1)[1]) for w in runs]
    assert seeds == sorted(seeds)


def test_the_plan_takes_domains_parts_and_scratch_seeds(tmp_path):
    out = script(str(tmp_path), "4", "syn,mnist", "scratch", "5,6")
    runs = [workdir(c) for c in listed(out.stdout)]  # Seed 4 is the pretrained part's: none.
    assert sorted(runs) == sorted(expected(tmp_path, (), ("syn", "mnist"), (5, 6), ("scratch",)))


def test_backbone_reaches_the_pretrained_part_only(tmp_path, monkeypatch):
    """BACKBONE=FILE: every pretrained run fine-tunes that file (an absolute path, naming no
    workdir); the scratch runs, which have no backbone, are as without it."""
    file = tmp_path / "candidate.msgpack"
    monkeypatch.setenv("BACKBONE", os.path.relpath(file, ROOT))
    cmds = listed(script(str(tmp_path), "0", "syn", "pretrained,scratch", "0").stdout)
    assert sorted(workdir(c) for c in cmds) == sorted(expected(tmp_path, (0,), ("syn",), (0,)))
    for cmd in cmds:
        sets = [a for a in cmd if a.startswith("--config.pretrained.path=")]
        scratch = "/demo_scratch" in workdir(cmd)
        assert sets == ([] if scratch else [f"--config.pretrained.path={file}"]), cmd


def test_jobs_reach_the_sweep(tmp_path):
    """JOBS=N is the sweep's --jobs: more jobs than CPUs stops before anything runs."""
    n = len(os.sched_getaffinity(0))
    env = {**os.environ, "MODE": "print", "JOBS": str(n + 1)}
    out = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path), "0", "syn", "pretrained"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        out.returncode != 0 and f"--jobs={n + 1}, but this process may use {n} CPUs" in out.stderr
    )
    assert not any(tmp_path.iterdir())


def accuracies(scratch: bool, rate: float, domain: str, seed: int) -> tuple[float, float]:
    """A run's (ID, OOD): pretrained OOD peaks at 0.9, from scratch it falls with the rate."""
    i = DOMAINS.index(domain)
    if scratch:
        ood = 0.40 - 0.20 * rate**2 + 0.02 * i + 0.01 * seed
        id_ = 0.90 - 0.30 * rate**3 + 0.01 * seed
    else:
        ood = 0.50 + 0.10 * rate - 0.50 * max(0.0, rate - 0.9) + 0.02 * i + 0.01 * seed
        id_ = 0.95 - 0.05 * rate + 0.005 * seed
    return round(id_, 6), round(ood, 6)


def write_finished_run(cmd: list[str]) -> None:
    """The records of a finished run of `cmd` in their formats: config.json (the config the
    command loads, its overrides applied), results.jsonl (one evaluation) and summary.json."""
    c = config_lib.load_config_file(cmd[cmd.index("-m") + 2].split("=", 1)[1])
    for arg in cmd:
        if arg.startswith("--config.") and "=" in arg:
            key, text = arg[len("--config.") :].split("=", 1)
            *parents, leaf = key.split(".")
            node = c
            for p in parents:
                node = node[p]
            old = node[leaf]
            node[leaf] = None if text == "None" else type(old)(text) if old is not None else text
    run = pathlib.Path(workdir(cmd))
    run.mkdir(parents=True)
    (run / "config.json").write_text(c.to_json_best_effort())
    id_, ood = accuracies("scratch" in c.config_name, c.dropout_rate, c.data.test_domains, c.seed)
    meta = {"method": c.method, "seed": c.seed, "trial_seed": c.trial_seed}
    meta |= {"test_domains": [c.data.test_domains], "dropout_rate": c.dropout_rate}
    meta |= {"config_name": c.config_name, "dataset": "digits_domains", "step": 150}
    rows = []
    for d in DOMAINS:
        test = d == c.data.test_domains
        for split, acc in (("in", ood if test else 1.0), ("out", 0.5 if test else id_)):
            rows.append({**meta, "accuracy": acc, "domain": d, "split": split, "loss": 1.0,
                         "is_test_domain": test, "num_examples": 500})  # fmt: skip
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    step = {"id_accuracy": id_, "ood_accuracy": ood, "ood_out_accuracy": 0.5, "step": 150}
    summary = {**meta, "selected": step, "last": step, "selection": "training_domain_validation"}
    (run / "summary.json").write_text(json.dumps(summary))


def test_finished_runs_are_skipped_and_the_report_draws_both_curves(default_plan, monkeypatch):
    tmp_path, cmds = default_plan
    for cmd in cmds:
        write_finished_run(cmd)
    # Everything finished: skipped, then the report. Its command line (whose start imports
    # TensorFlow, ~15 s; tests/test_cli.py runs it) is echoed by a stand-in `python`, and
    # the report is written in-process here.
    (bin_dir := tmp_path.parent / "bin").mkdir()
    stand_in = f"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m richft_jax.report" ]]; then echo "report: $*"; exit 0; fi
exec {shlex.quote(sys.executable)} "$@"
"""
    (bin_dir / "python").write_text(stand_in)
    (bin_dir / "python").chmod(0o755)
    out = script(str(tmp_path), mode="run", path=str(bin_dir))
    assert "run: " not in out.stdout and out.stdout.count("skip (finished)") == len(cmds)
    assert out.stdout.strip().splitlines()[-1] == (
        f"report: -m richft_jax.report {tmp_path} --out {tmp_path}/report"
    )
    report.write_report([str(tmp_path)], str(tmp_path / "report"))
    png = tmp_path / "report" / "dropout_rate_digits_domains.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    tables = (tmp_path / "report" / "tables.md").read_text()
    assert "digits_domains, pretrained, accuracy against the penultimate dropout rate" in tables
    assert "digits_domains, from scratch, accuracy against the penultimate dropout rate" in tables
    for row in ("erm", "erm_scratch", "very_large_dropout (p=0.99)"):  # Rows of their own:
        assert f"| {row} | " in tables  # never selected between as settings.
    assert "| very_large_dropout_scratch (p=0.99) | 2 | " in tables

    records = sel.run_records([str(tmp_path)])
    curves = report_figures.rate_curves(records, "digits_domains")
    assert list(curves) == ["pretrained", "from scratch"]
    for name, curve in curves.items():
        seeds = (0, 1, 2) if name == "pretrained" else (0, 1)
        assert list(curve) == [float(r) for r in RATES]
        for rate, v in curve.items():
            assert v["seeds"] == len(seeds) and v["test_domains"] == sorted(DOMAINS)
            # Per seed the mean over test domains, then mean ± DomainBed's error over seeds.
            runs = [[accuracies(name != "pretrained", rate, d, s) for d in DOMAINS]
                    for s in seeds]  # fmt: skip
            per_seed = np.array(runs).mean(axis=1)  # (seed, ID / OOD)
            for k, key in ((0, "id"), (1, "ood")):
                mean, se = v[key]
                assert mean == pytest.approx(np.mean(per_seed[:, k]))
                assert se == pytest.approx(np.std(per_seed[:, k]) / np.sqrt(len(seeds)))
    # Each curve keeps its own shape (the written numbers: pretrained peaks at 0.9, from
    # scratch falls with the rate); mixed, neither would.
    ood = {n: {r: v["ood"][0] for r, v in c.items()} for n, c in curves.items()}
    assert max(ood["pretrained"], key=ood["pretrained"].get) == 0.9
    assert list(ood["from scratch"].values()) == sorted(ood["from scratch"].values())[::-1]

    drawn = []
    monkeypatch.setattr(report_figures, "save_figure", lambda fig, path, **_: drawn.append(fig))
    report_figures.plot_rate_curve(curves, "digits_domains", tmp_path / "again.png")
    ((fig,),) = [drawn]
    ood_ax, id_ax = fig.axes
    assert ood_ax.get_xlabel() == "penultimate dropout rate"
    assert [t.get_text() for t in ood_ax.get_xticklabels()] == list(RATES)
    legend = [t.get_text() for t in ood_ax.get_legend().get_texts()]
    assert legend == ["pretrained (3 seeds)", "from scratch (2 seeds)"]
    assert len(ood_ax.containers) == len(id_ax.containers) == 2  # An error-bar line each.
    for ax, k in ((ood_ax, "ood"), (id_ax, "id")):
        for container, curve in zip(ax.containers, curves.values(), strict=True):
            ys = container.lines[0].get_ydata()
            assert np.allclose(ys, [100 * v[k][0] for v in curve.values()])
