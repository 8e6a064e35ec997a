r"""Expands a grid of runs (configs × overrides × seeds) and runs or prints them.

  python launch/sweep.py --out=workdirs/sweep --config=demo \
      --config=demo_erm --grid=data.test_domains=mnist,mnist_m,digits,syn \
      --seeds=0,1,2 [--mode=run|print] [--along-run=uniform_soup,greedy_soup,...]

--set=key=value gives every run one more override that names no workdir (a backbone's path,
say; a --grid value names its runs' workdirs, so it cannot hold a path).
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
(--grid=keep_checkpoints=N). --jobs=N runs N at once, each pinned to its own share of the
CPUs (every run, so that their numbers compare: XLA's CPU reductions depend on the threads a
run has), after the first unfinished run has run alone on its share (it builds the dataset and
the compilation cache the others read); their output lines are prefixed with the run, and a
failed run starts no more. On 2 cores, --jobs=2 finishes more demo runs an hour than one
two-core run at a time (docs/benchmarks.md, "Sweeps on 2 cores"). --out may be a
bucket (gs://BUCKET/sweep): the workdirs are then gs:// URLs, read there to skip finished
runs.
"""

import concurrent.futures
import itertools
import json
import os
import pathlib
import queue
import shlex
import subprocess
import sys
import threading

import ml_collections
from absl import app, flags
from etils import epath

from richft_jax import config_lib, paths, schedule


def sweep_root(out: str | os.PathLike) -> epath.Path:
    """--out as the workdirs' root: a gs:// URL as given, a local path as given (relative ones
    stay relative in the printed commands, which run elsewhere); other URLs refused."""
    checked = paths.path(out, "--out")
    return checked if paths.is_remote(out) else epath.Path(out)


def expand(
    configs: list[str],
    grid: dict[str, list[str]],
    seeds: list[int],
    out: str | os.PathLike,
    fixed: dict[str, str] | None = None,
) -> list[tuple[epath.Path, list[str]]]:
    """[(workdir, command)] for every config × grid point × seed, workdirs named by their values;
    `fixed` ({key: value}, --set) is given to every run and names no workdir.

    Seeds vary slowest, then grid points, then configs: an interrupted sweep has whole
    comparisons (every config at every grid point) for its first seeds.
    """
    runs, root = [], sweep_root(out)
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
                workdir = root.joinpath(*parts, f"seed{seed}")
                cmd = [
                    sys.executable,
                    "-m",
                    "richft_jax.main",
                    f"--config={config}",
                    f"--workdir={workdir}",
                    f"--config.seed={seed}",
                    f"--config.trial_seed={seed}",
                ] + [f"--config.{k}={v}" for k, v in zip(keys, values, strict=True)]
                cmd += [f"--config.{k}={v}" for k, v in (fixed or {}).items()]
                runs.append((workdir, cmd))
    return runs


def along_run_command(workdir: epath.Path, combinations: str) -> list[str] | None:
    """The configs/combine.py command over the checkpoints a finished run (local or gs://)
    saved, or None when its along-run combinations are already written."""
    workdir = epath.Path(workdir)
    out = workdir / "along_run"
    if (out / "summary.json").exists():
        return None
    text = (workdir / "config.json").read_text(encoding="utf-8")
    config = ml_collections.ConfigDict(json.loads(text))
    kept = paths.finished_step_dirs(workdir / paths.CHECKPOINTS)  # Committed ones only.
    # The paper configs start the along-run ensembles and soups at config.along_run_start.
    steps = [kept[s] for s in schedule.along_run_steps(config, list(kept))]
    if len(steps) < 2:
        raise SystemExit(
            f"--along-run: {workdir}/checkpoints has {len(steps)} checkpoint(s) from "
            f"along_run_start={config.get('along_run_start')} on, need 2 or more (set "
            "--grid=keep_checkpoints=N)."
        )
    method = config.method
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


def run_sweep(
    out: str,
    configs: list[str],
    grid: dict[str, list[str]],
    seeds: list[int],
    mode: str = "run",
    along_run: str = "",
    jobs: int = 1,
    fixed: dict[str, str] | None = None,
) -> None:
    """Runs (mode="run") or prints (mode="print") every run of `expand`, and with `along_run`
    the combinations of each run's checkpoints: the command line's work, callable without it.
    jobs > 1 runs that many at once, each pinned to its own share of this process's CPUs."""
    runs = expand(configs, grid, seeds, out, fixed)
    if mode == "print":
        for _, cmd in runs:
            print(shlex.join(cmd))
        return
    if jobs == 1:
        for workdir, cmd in runs:
            _run_one(workdir, cmd, along_run, _run_here)
        return
    # Every run on one share of the CPUs, the same for all, so a sweep's runs compare (XLA's
    # CPU reductions, hence the numbers, depend on the threads a run has). The first unfinished
    # run goes alone: it builds what the others read (the dataset, the compilation cache),
    # which concurrent first runs would race to build.
    runner, failed = _pinned_runner(jobs, sweep_root(out)), threading.Event()
    unfinished = [i for i, (w, _) in enumerate(runs) if not (w / "summary.json").exists()]
    first = unfinished[0] if unfinished else len(runs)
    for workdir, cmd in runs[: first + 1]:
        _run_one(workdir, cmd, along_run, runner)
    rest, n = runs[first + 1 :], max(1, min(jobs, len(unfinished) - 1))

    def guarded(workdir: epath.Path, cmd: list[str]) -> None:
        if failed.is_set():  # A run failed: start no more.
            return
        try:
            _run_one(workdir, cmd, along_run, runner)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(guarded, w, c) for w, c in rest]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # The first error, once the runs under way have ended.


def _run_here(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def _run_one(workdir: epath.Path, cmd: list[str], along_run: str, run) -> None:
    """One run unless finished (summary.json), then its along-run combinations if asked."""
    if (workdir / "summary.json").exists():
        print(f"skip (finished): {workdir}", flush=True)
    else:
        print(f"run: {shlex.join(cmd)}", flush=True)
        run(cmd)
    if along_run and (combine := along_run_command(workdir, along_run)):
        print(f"run: {shlex.join(combine)}", flush=True)
        run(combine)


def cpu_shares(jobs: int) -> list[tuple[int, ...]]:
    """This process's CPUs dealt into `jobs` disjoint shares, one per concurrent run (Linux:
    os.sched_getaffinity)."""
    if not hasattr(os, "sched_getaffinity"):
        raise ValueError(f"--jobs={jobs} pins runs to CPUs, which needs Linux; use --jobs=1.")
    cpus = sorted(os.sched_getaffinity(0))
    if jobs > len(cpus):
        raise ValueError(f"--jobs={jobs}, but this process may use {len(cpus)} CPUs {cpus}.")
    return [tuple(cpus[i::jobs]) for i in range(jobs)]


def _pinned_runner(jobs: int, root: epath.Path):
    """A callable running one command on a free CPU share, its output lines prefixed by the
    command's workdir (relative to the sweep's root) so concurrent runs stay readable."""
    free = queue.Queue()
    for share in cpu_shares(jobs):
        free.put(share)

    def run(cmd: list[str]) -> None:
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        share = free.get()
        tag = f"[{workdir.removeprefix(f'{root}/')} cpu{','.join(map(str, share))}]"
        # Pinned at once, before the child starts its threads (they inherit it); preexec_fn
        # is not safe in a threaded parent.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        try:
            os.sched_setaffinity(proc.pid, share)
            for line in proc.stdout:
                print(f"{tag} {line}", end="", flush=True)
            if proc.wait():
                raise subprocess.CalledProcessError(proc.returncode, cmd)
        finally:
            if proc.poll() is None:  # Our reading failed: no child left without a reader.
                proc.kill()
                proc.wait()
            free.put(share)

    return run


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """--grid's `key=v1,v2,...` items as {key: [v1, v2, ...]}."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r} is not key=v1,v2,...")
        key, values = item.split("=", 1)
        grid[key] = values.split(",")
    return grid


def parse_set(items: list[str]) -> dict[str, str]:
    """--set's `key=value` items as {key: value}; a key both set and on the grid is refused."""
    fixed = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not key=value.")
        key, value = item.split("=", 1)
        fixed[key] = value
    return fixed


def _validator(parse):
    """A flag validator: `parse`'s ValueError as absl's ValidationError (named at startup)."""

    def check(items: list[str]) -> bool:
        try:
            parse(items)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from e
        return True

    return check


def _check_seeds(seeds: str) -> bool:
    if not all(s.strip().lstrip("-").isdigit() for s in seeds.split(",")):
        raise flags.ValidationError(f"--seeds={seeds!r} is not comma-separated integers.")
    return True


def _check_configs(configs: list[str] | None) -> bool:
    """Loads every config (and its argument) once, so a misspelled one stops the sweep before
    anything runs."""
    for config in configs or []:
        try:
            config_lib.load_config_file(config)
        except (OSError, ValueError) as e:
            raise flags.ValidationError(f"--config={config}: {e}") from e
    return True


def _check_jobs(jobs: int) -> bool:
    if jobs == 1:
        return True
    try:
        cpu_shares(jobs)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e
    return True


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this command line's flags (with their checks) in `flag_values` when it starts,
    not at import: the entry points share flag names (--out, --config)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("out", None, "Root directory of the sweep's workdirs.", **fv)
    flags.DEFINE_multi_string("config", None, "Config name or path[:arg]", **fv)
    flags.DEFINE_multi_string("grid", [], "key=v1,v2,...: one axis of the grid", **fv)
    flags.DEFINE_multi_string(
        "set", [], "key=value: one override for every run, not in the workdirs' names", **fv
    )
    flags.DEFINE_string("seeds", "0", "Comma-separated seeds.", **fv)
    flags.DEFINE_enum("mode", "run", ["run", "print"], "Run here, or print the commands.", **fv)
    flags.DEFINE_string("along_run", "", "Combinations of each run's saved checkpoints.", **fv)
    flags.DEFINE_alias("along-run", "along_run", **fv)
    flags.DEFINE_integer(
        "jobs", 1, "Runs at once, each pinned to its own share of the CPUs.", lower_bound=1, **fv
    )
    flags.mark_flags_as_required(["out", "config"], **fv)
    flags.register_validator("grid", _validator(parse_grid), **fv)
    flags.register_validator("set", _validator(parse_set), **fv)
    flags.register_validator("seeds", _check_seeds, **fv)
    flags.register_validator("jobs", _check_jobs, **fv)
    flags.register_validator("config", _check_configs, **fv)


def main(argv: list[str]) -> int:
    """Runs or prints the sweep the flags describe."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    seeds = [int(s) for s in f.seeds.split(",")]
    grid, fixed = parse_grid(f.grid), parse_set(f.set)
    if both := sorted(set(grid) & set(fixed)):
        raise app.UsageError(f"{both} given to both --grid and --set: give each key once.")
    run_sweep(f.out, f.config, grid, seeds, f.mode, f.along_run, f.jobs, fixed)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
