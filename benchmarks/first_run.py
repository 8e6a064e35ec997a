"""The README's demo command as a new user meets it: first on a fresh home (no TFDS data, no
compilation cache, nothing in $RICHFT_CACHE), then again into a new workdir (everything cached).

  python -m benchmarks.first_run [--out=FILE.json] [--steps=N] [--home=DIR] [-- --config.KEY=V ...]
  python -m benchmarks.first_run --ab='{"a": [], "b": ["--config.KEY=V"]}' [--rounds=2]
  python -m benchmarks.first_run --a_rev=GIT_REVISION [--rounds=2]
  python -m benchmarks.first_run --a_pythonpath=DIR [--rounds=2]   # DIR: pip install --target

Prints two lines per run: wall seconds, whether it pretrained (it should not: the backbone ships
with the package), the backbone sha256 the run recorded, the selected step's OOD accuracy, and
the load average (a timing is a measurement only on an idle machine); then where the time went
(the run's summary.json `timings_s`) and the wall time over the train steps' (steps plus the
input waits between them: the loop's time less evaluation and checkpoints).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from richft_jax import timing

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_run(
    home: pathlib.Path,
    workdir: pathlib.Path,
    steps: int | None,
    extra: list[str],
    repo: pathlib.Path = REPO,
    pythonpath: str | None = None,
) -> dict:
    """Runs the demo command (and `extra` flags) from the source tree `repo`, with `home` as
    HOME (cache and TFDS data inside) and `pythonpath` first on PYTHONPATH; what it did."""
    env = run_env(home, pythonpath)
    command = [sys.executable, "-m", "richft_jax.main", "--config=configs/demo.py"]
    command += [f"--workdir={workdir}"] + ([f"--config.num_steps={steps}"] if steps else [])
    command += extra
    start = time.perf_counter()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    config = json.loads((workdir / "config.json").read_text())
    summary = json.loads((workdir / "summary.json").read_text())
    cache = home / ".cache" / "richft_jax"
    return {
        "wall_s": round(wall, 1),
        "pretrained_here": "Pretraining the backbone first" in done.stderr
        or any(p.name.startswith("demo_pretrain") for p in cache.glob("*")),
        "backbone_sha256": config["pretrained"].get("sha256"),
        "ood": summary["selected"]["ood_accuracy"],
        "load_average": round(os.getloadavg()[0], 2),
        "timings_s": summary["timings_s"],
        "wall_over_steps": round(wall / steps_seconds(summary["timings_s"]), 2),
    }


def run_env(home: pathlib.Path, pythonpath: str | None = None) -> dict[str, str]:
    """This process's environment without the caches' variables, `home` as HOME, `pythonpath`
    (if given) first on PYTHONPATH."""
    fresh = ("RICHFT_CACHE", "TFDS_DATA_DIR", "RICHFT_COMPILATION_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in fresh}
    env["HOME"] = str(home)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return env


def steps_seconds(timings: dict) -> float:
    """The train steps' own time: the loop's steps and the input waits between them (the step
    runs asynchronously, so the waits overlap it)."""
    return timings["train_steps"] + timings.get("input", 0.0)


def run_lines(name: str, r: dict, cpus: int | None) -> str:
    """`one_run`'s result `r` as the two lines printed for it: wall time, pretraining, backbone,
    OOD and load; then where the time went and the wall time over the train steps'."""
    return (
        f"demo {name} run: {r['wall_s']:.1f} s wall; pretrained here: "
        f"{'yes' if r['pretrained_here'] else 'no'}; backbone sha256 "
        f"{(r['backbone_sha256'] or 'none')[:12]}...; OOD {100 * r['ood']:.1f}% "
        f"(load average {r['load_average']} on {cpus} CPUs)\n"
        f"  {timing.breakdown_line(r['timings_s'], ('train_steps', 'input'))}; wall / "
        f"train steps {r['wall_over_steps']:.2f}"
    )


def ab_variants(
    parser: argparse.ArgumentParser,
    text: str | None,
    a_rev: str | None = None,
    a_pythonpath: str | None = None,
) -> dict[str, list[str]]:
    """--ab's {name: [flags]} (checked: a usage error names what is wrong); with only --a_rev
    and/or --a_pythonpath, that code or those packages against this tree as installed; else the
    plain benchmark's one cached variant."""
    if not text:
        first = [f"at {a_rev}"] * bool(a_rev) + [f"with {a_pythonpath}"] * bool(a_pythonpath)
        return {" ".join(first): [], "this tree": []} if first else {"cached": []}
    try:
        variants = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f'--ab is not JSON ({e}): give {{"name": ["--config.KEY=V", ...], ...}}.')
    ok = isinstance(variants, dict) and variants and "first" not in variants
    if not ok or not all(
        isinstance(v, list) and all(isinstance(f, str) for f in v) for v in variants.values()
    ):
        parser.error(
            f'--ab={text}: give a JSON object of variant names (not "first") to lists of flags.'
        )
    return variants


def worktree(rev: str, where: pathlib.Path) -> pathlib.Path:
    """A detached checkout of `rev` at `where` (git worktree), or a usage error naming it."""
    done = subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), rev],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"--a_rev={rev}: git cannot check it out: {done.stderr.strip()}")
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="Also write the results as JSON here.")
    parser.add_argument("--steps", type=int, help="Fewer fine-tuning steps (a quick check).")
    parser.add_argument(
        "--home", help="Keep the fresh HOME here (an empty or new folder): later runs reuse it."
    )
    parser.add_argument(
        "--ab",
        help="JSON {name: [flags]}: after one first run, cached runs of each variant, "
        "alternating, --rounds times (an A/B of a change on a noisy machine).",
    )
    parser.add_argument(
        "--a_rev",
        help="Git revision whose code runs the first variant (a checkout in a temporary "
        "worktree; the others run this tree's): an A/B of a change to the code.",
    )
    parser.add_argument(
        "--a_pythonpath",
        help="A folder put first on the first variant's PYTHONPATH (`pip install --target DIR "
        "PKG==VERSION`): an A/B of a dependency's version.",
    )
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of --ab's variants.")
    parser.add_argument("extra", nargs="*", help="After --: flags for every demo run.")
    args = parser.parse_args()
    if args.a_pythonpath and not pathlib.Path(args.a_pythonpath).is_dir():
        parser.error(f"--a_pythonpath={args.a_pythonpath} is not a folder.")
    variants = ab_variants(parser, args.ab, args.a_rev, args.a_pythonpath)
    ab = bool(args.ab or args.a_rev or args.a_pythonpath)
    order = ["first"] + [n for _ in range(args.rounds if ab else 1) for n in variants]
    try:
        runs = _runs(args, variants, order)
    finally:
        if args.a_rev:  # The temporary worktree is gone: drop git's record of it.
            subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=False)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(runs, indent=2) + "\n")


def _runs(args: argparse.Namespace, variants: dict, order: list[str]) -> dict:
    """The first run, then the cached runs in `order`, each printed as it ends."""
    with tempfile.TemporaryDirectory(prefix="richft_first_run_") as tmp:
        repos = {name: REPO for name in variants}
        paths = dict.fromkeys(variants)
        if args.a_rev:
            repos[next(iter(variants))] = worktree(args.a_rev, pathlib.Path(tmp) / "a_rev")
        if args.a_pythonpath:
            paths[next(iter(variants))] = str(pathlib.Path(args.a_pythonpath).absolute())
        home = pathlib.Path(args.home or pathlib.Path(tmp) / "home").absolute()
        home.mkdir(parents=True, exist_ok=True)
        if any(home.iterdir()):
            raise SystemExit(f"--home={home} is not empty: a first run needs a fresh home.")
        runs = {}
        for i, name in enumerate(order):
            # The first run compiles the first variant's programs; the others' first rounds
            # compile theirs (each line shows its compilation time).
            variant = next(iter(variants)) if name == "first" else name
            flags = args.extra + variants[variant]
            run_dir = pathlib.Path(tmp) / f"run_{i}"
            r = one_run(home, run_dir, args.steps, flags, repos[variant], paths[variant])
            runs.setdefault(name, []).append(r)
            print(run_lines(name, r, os.cpu_count()), flush=True)
        return {k: v[0] if len(v) == 1 else v for k, v in runs.items()}


if __name__ == "__main__":
    main()
