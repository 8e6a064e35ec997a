"""Expands a grid of runs (configs × overrides × seeds) and runs or prints them.

  python launch/sweep.py --out=workdirs/sweep --config=demo \
      --config=demo_erm --grid=data.test_domains=mnist,mnist_m,digits,syn \
      --seeds=0,1,2 [--mode=run|print] [--along-run=uniform_soup,greedy_soup,...]

--config takes what `richft_jax.main --config` takes (a name such as `demo_rsl:noisy,erm`, or
a path such as configs/demo_rsl.py:noisy,erm); every config (and its argument) is loaded once
before anything runs, so a misspelled one stops the sweep at once instead of at its first run.

--mode=run runs them here one after another, skipping runs whose summary.json exists (so an
interrupted sweep is resumed by rerunning it); --mode=print prints one command per line, to
feed a SLURM array (`sed -n ${SLURM_ARRAY_TASK_ID}p`) or a TPU pod's `--command`. Each
seed sets both `seed` and `trial_seed` (DomainBed: the trial seed draws the splits).
--along-run=COMBINATIONS also combines, after each run, the checkpoints it saved along the
way (configs/combine.py into RUN/along_run, rows named "<method>+<combination>"): the
paper's along-run ensembles and soups. Runs must keep those checkpoints
(--grid=keep_checkpoints=N).
"""

import argparse
import itertools
import json
import pathlib
import shlex
import subprocess
import sys

from richft_jax import config_lib


def expand(
    configs: list[str], grid: dict[str, list[str]], seeds: list[int], out: str
) -> list[tuple[pathlib.Path, list[str]]]:
    """[(workdir, command)] for every config × grid point × seed, workdirs named by their values.

    Seeds vary slowest, then grid points, then configs: an interrupted sweep has whole
    comparisons (every config at every grid point) for its first seeds.
    """
    runs = []
    keys = sorted(grid)
    for seed in seeds:
        for values in itertools.product(*(grid[k] for k in keys)):
            for config in configs:
                name = pathlib.Path(config.split(":")[0]).stem + (
                    "_" + config.split(":", 1)[1].replace(",", "_") if ":" in config else ""
                )
                parts = [name] + [
                    f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values, strict=True)
                ]
                workdir = pathlib.Path(out, *parts, f"seed{seed}")
                cmd = [
                    sys.executable,
                    "-m",
                    "richft_jax.main",
                    f"--config={config}",
                    f"--workdir={workdir}",
                    f"--config.seed={seed}",
                    f"--config.trial_seed={seed}",
                ] + [f"--config.{k}={v}" for k, v in zip(keys, values, strict=True)]
                runs.append((workdir, cmd))
    return runs


def along_run_command(workdir: pathlib.Path, combinations: str) -> list[str] | None:
    """The configs/combine.py command over the checkpoints a finished run saved, or None when
    its along-run combinations are already written."""
    out = workdir / "along_run"
    if (out / "summary.json").exists():
        return None
    steps = sorted(
        (p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if len(steps) < 2:
        raise SystemExit(
            f"--along-run: {workdir}/checkpoints has {len(steps)} checkpoint(s), "
            "need 2 or more (set --grid=keep_checkpoints=N)."
        )
    method = json.loads((workdir / "config.json").read_text())["method"]
    return [
        sys.executable,
        "-m",
        "richft_jax.main",
        "--config=configs/combine.py",
        f"--workdir={out}",
        f"--config.checkpoints={','.join(map(str, steps))}",
        f"--config.combinations={combinations}",
        f"--config.method_prefix={method}+",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Root directory of the sweep's workdirs.")
    parser.add_argument("--config", action="append", required=True, help="Config (repeatable).")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable).")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds.")
    parser.add_argument("--mode", choices=("run", "print"), default="run")
    parser.add_argument(
        "--along-run", default="", help="Combinations of each run's saved checkpoints."
    )
    args = parser.parse_args(argv)
    grid = {}
    for item in args.grid:
        if "=" not in item:
            parser.error(f"--grid {item!r} is not key=v1,v2,...")
        key, values = item.split("=", 1)
        grid[key] = values.split(",")
    for config in args.config:
        try:
            config_lib.load_config_file(config)
        except (OSError, ValueError) as e:
            parser.error(f"--config={config}: {e}")
    runs = expand(args.config, grid, [int(s) for s in args.seeds.split(",")], args.out)
    for workdir, cmd in runs:
        if args.mode == "print":
            print(shlex.join(cmd))
            continue
        if (workdir / "summary.json").exists():
            print(f"skip (finished): {workdir}", flush=True)
        else:
            print(f"run: {shlex.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)
        if args.along_run and (combine := along_run_command(workdir, args.along_run)):
            print(f"run: {shlex.join(combine)}", flush=True)
            subprocess.run(combine, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
