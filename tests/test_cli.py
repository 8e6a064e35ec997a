"""The command lines: one absl flag style, --help lists each one's flags, unknown or missing
flags are refused by name, and the console scripts point at importable functions."""

import gc
import importlib.metadata
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from richft_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Entry point -> the flags its --help must list (absl writes booleans as --[no]NAME).
ENTRY_POINTS = {
    "richft_jax.main": (
        ["-m", "richft_jax.main"],
        [
            "--config",
            "--workdir",
            "--[no]distributed",
            "--coordinator_address",
            "--process_id",
            "--[no]verbose",
            "--[no]library_logs",
        ],
    ),
    "richft_jax.report": (["-m", "richft_jax.report"], ["--out"]),
    "richft_jax.convert": (
        ["-m", "richft_jax.convert"],
        ["--source", "--format", "--out", "--model"],
    ),
    "launch/sweep.py": (
        ["launch/sweep.py"],
        ["--out", "--config", "--grid", "--seeds", "--mode", "--along_run", "--along-run"],
    ),
    "richft_jax.analysis.linear_regime": (
        ["-m", "richft_jax.analysis.linear_regime"],
        ["--runs", "--out", "--analyses", "--alphas", "--which", "--pretrained", "--lft_steps"],
    ),
    "richft_jax.analysis.gradient_stats": (
        ["-m", "richft_jax.analysis.gradient_stats"],
        ["--config", "--out", "--rate", "--steps", "--cutoff", "--num_batches"],
    ),
    "benchmarks.benchmark": (
        ["-m", "benchmarks.benchmark"],
        ["--model", "--batch", "--steps", "--[no]torch", "--[no]compile_only", "--profile"],
    ),
}
SCRIPTS = {
    "richft-train": "richft_jax.main:run",
    "richft-combine": "richft_jax.main:run",
    "richft-report": "richft_jax.report:run",
    "richft-convert": "richft_jax.convert:run",
    "richft-linear-regime": "richft_jax.analysis.linear_regime:run",
    "richft-gradient-stats": "richft_jax.analysis.gradient_stats:run_cli",
}


def python(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root, as the README and launch/*.sh run them."""
    cmd = [sys.executable, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def probe(code: str) -> str:
    """What `python -c code` prints (stripped); the process must succeed."""
    out = python("-c", code)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def load_sweep():
    """launch/sweep.py as a module (launch/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "launch" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


def assert_lists(help_text: str, names: list[str]) -> None:
    """absl's --help text lists each flag of `names` (as `  --name: help`)."""
    listed = help_text.split("\nflags:\n", 1)[-1]
    for flag in names:
        assert f"  {flag}:" in listed, (flag, help_text)


def help_command(name: str) -> list[str]:
    """`--help` of entry point `name`: through its console script when it has one (installed
    beside the venv's python: the script runs and points at the module's function), else as the
    README runs it. (`python -m MODULE` of those runs in test_unknown_flag_is_refused_by_name.)"""
    scripts = {}
    for script, target in SCRIPTS.items():  # richft-train (not richft-combine) for main.
        if target.endswith(":run"):
            scripts.setdefault(target.split(":")[0], script)
    if name in scripts:
        return [str(pathlib.Path(sys.executable).parent / scripts[name]), "--help"]
    return [sys.executable, *ENTRY_POINTS[name][0], "--help"]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_the_flags(name):
    _, names = ENTRY_POINTS[name]
    out = subprocess.run(help_command(name), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stderr  # absl's --help exits 1.
    assert "FATAL" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert_lists(out.stdout, names)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_unknown_flag_is_refused_by_name(name):
    args, _ = ENTRY_POINTS[name]
    out = python(*args, "--no_such_flag=1")
    assert out.returncode != 0
    assert "Unknown command line flag 'no_such_flag'" in out.stderr, out.stderr


def test_missing_required_flags_are_named():
    out = python("-m", "richft_jax.convert", "--out=/nonexistent")
    assert out.returncode != 0 and "Flag --source must have a value" in out.stderr, out.stderr
    assert "Flag --format must have a value" in out.stderr
    out = python("launch/sweep.py", "--out=/nonexistent")
    assert out.returncode != 0 and "Flag --config must have a value" in out.stderr, out.stderr
    out = python("-m", "richft_jax.report", "--out=/nonexistent")  # No DIR.
    assert out.returncode != 0 and "Give one or more run directories" in out.stderr


def test_report_command_as_demo_table_runs_it(tmp_path):
    run = tmp_path / "runs" / "erm_seed0"
    run.mkdir(parents=True)
    base = {"step": 1, "method": "erm", "trial_seed": 0, "seed": 0, "dataset": "toy"}
    base |= {"test_domains": ["a"], "loss": 1.0}
    rows = [
        {**base, "domain": d, "split": s, "is_test_domain": d == "a", "accuracy": 0.5}
        for d in ("b", "a")
        for s in ("in", "out")
    ]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = python("-m", "richft_jax.report", str(tmp_path / "runs"), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "| erm | 1 | X | 50.0 | X |" in out.stdout  # One seed: the mean alone, and its count.
    assert (tmp_path / "r" / "tables.md").read_text(encoding="utf-8") in out.stdout
    out = python("-m", "richft_jax.report", str(tmp_path / "empty"))
    assert out.returncode == 1 and "No results.jsonl under" in out.stderr


def test_sweep_command_as_demo_table_writes_it(tmp_path):
    grid = "--grid=data.test_domains=mnist,syn"
    out = python(
        *("launch/sweep.py", f"--out={tmp_path}", "--config=configs/demo_erm.py"),
        *("--config=configs/demo.py", grid, "--seeds=0,1", "--mode=print"),
        "--along-run=uniform_soup,greedy_soup",
    )
    assert out.returncode == 0, out.stderr
    commands = out.stdout.strip().splitlines()
    assert len(commands) == 2 * 2 * 2
    assert f"--workdir={tmp_path}/demo_erm/test_domains=mnist/seed0" in commands[0]
    out = python("launch/sweep.py", f"--out={tmp_path}", "--config=demo", "--grid=nokey")
    assert out.returncode != 0 and "--grid 'nokey' is not key=v1,v2,..." in out.stderr


def test_flags_parse_as_the_launch_scripts_write_them():
    """define_flags(FlagValues) parses without the global flags: both `--flag=v` and
    `--flag v`, repeated flags, and sweep's --along-run under its old name."""
    from richft_jax import convert, report

    fv = flags.FlagValues()
    report.define_flags(fv)
    assert fv(["report", "runs_a", "--out", "out_dir", "runs_b"]) == ["report", "runs_a", "runs_b"]
    assert fv.out == "out_dir"
    fv = flags.FlagValues()
    convert.define_flags(fv)
    fv(["convert", "--source=w.npz", "--format=big_vision_npz", "--out=o", "--model=vit_b16"])
    assert (fv.source, fv.format, fv.out, fv.model) == ("w.npz", "big_vision_npz", "o", "vit_b16")
    fv = flags.FlagValues()
    load_sweep().define_flags(fv)
    fv(["sweep", "--out=o", "--config=demo", "--config", "demo_erm", "--along-run=greedy_soup"])
    assert fv.config == ["demo", "demo_erm"] and fv.along_run == "greedy_soup"
    assert (fv.seeds, fv.mode, fv.grid) == ("0", "run", [])


def test_console_scripts_are_registered():
    """By the (editable) install: reinstall (`pip install -e .`) after editing [project.scripts]."""
    found = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert {name: found.get(name) for name in SCRIPTS} == SCRIPTS, "pip install -e ."


def test_library_info_lines_are_dropped_but_not_their_warnings_or_ours():
    import logging

    from richft_jax import cli

    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "m", None, None)

    f = cli.LibraryInfoFilter()
    site = "/venv/lib/python3.11/site-packages"
    assert not f.filter(record(f"{site}/orbax/checkpoint/_src/checkpointer.py", logging.INFO))
    assert not f.filter(record(f"{site}/tensorflow_datasets/core/builder.py", logging.INFO))
    assert f.filter(record(f"{site}/orbax/checkpoint/checkpoint_manager.py", logging.WARNING))
    assert f.filter(record("/repo/richft_jax/train.py", logging.INFO))
    assert not f.filter(record(f"{site}/clu/platform/local.py", logging.INFO))
    assert not f.filter(record(f"{site}/jax/_src/xla_bridge.py", logging.INFO))


@pytest.mark.parametrize(
    ("module", "required"),
    [
        ("richft_jax.analysis.backbone_richness", "--backbone=x"),
        ("richft_jax.analysis.linear_regime", "--runs=x"),
    ],
)
def test_flag_only_commands_refuse_positional_arguments(module, required, tmp_path):
    """cli.run_flags: a stray argument (a mistyped flag) stops the command before any work."""
    out = python("-m", module, "stray", required, f"--out={tmp_path}/o")
    assert out.returncode != 0
    assert "Unexpected arguments ['stray']: every input is a --flag." in out.stderr, out.stderr
    assert not (tmp_path / "o").exists()


def test_analysis_commands_parse_their_flags_before_importing_jax_or_tensorflow():
    """The analysis commands and the benchmark are light fronts (their libraries are imported
    after the flags parse), so --help and a mistyped flag answer in a fraction of a second, as
    main's do."""
    code = (
        "import sys\n"
        "from absl import flags\n"
        "from benchmarks import benchmark\n"
        "from richft_jax.analysis import backbone_richness, gradient_stats, linear_regime\n"
        "for command in (backbone_richness, gradient_stats, linear_regime, benchmark):\n"
        "    command.define_flags(flags.FlagValues())\n"
        "heavy = ('tensorflow', 'tensorflow_datasets', 'jax', 'flax', 'orbax', 'clu', 'torch')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert probe(code) == "[]"


def test_entry_points_import_without_the_collector_then_freeze_what_is_alive(tmp_path):
    """cli.run imports the entry point's libraries (its `first` step, JAX's cache, its
    `imports`) with the garbage collector off, then freezes what is alive (cli.importing) before
    the entry point's main: collecting while TensorFlow's objects piled up took 0.8 s of a run's
    start-up, and the interpreter's last collection at exit skips them (1.1 s a process with
    TensorFlow). The collector is on again in main; nothing was frozen before."""
    (tmp_path / "heavy_module.py").write_text("import gc\nCOLLECTING = gc.isenabled()\n")
    code = (
        "import gc, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from richft_jax import cli\n"
        "before = gc.get_freeze_count()\n"
        "def first():\n"
        "    print('first', gc.isenabled())\n"
        "def main(argv):\n"
        "    heavy = sys.modules['heavy_module'].COLLECTING\n"
        "    print('main', before, gc.get_freeze_count() > 1000, gc.isenabled(), heavy)\n"
        "sys.argv = ['probe']\n"
        "kwargs = dict(first=first, imports=('heavy_module',), uses_jax=False)\n"
        "cli.run(main, '__main__', 'probe', **kwargs)\n"
    )
    assert probe(code) == "first False\nmain 0 True True False"


def test_importing_turns_the_collector_back_on_after_an_error_and_leaves_it_off_if_it_was(
    monkeypatch,
):
    monkeypatch.setattr(gc, "freeze", lambda: None)  # This test process keeps its collections.
    assert gc.isenabled()
    with pytest.raises(SystemExit), cli.importing():
        assert not gc.isenabled()
        raise SystemExit("preflight failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with cli.importing():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_tests_run_with_the_collector_on_and_the_imports_frozen():
    """tests/conftest.py turns the collector off for the worker's imports; its runtestloop hook
    must have turned it back on (GC_THRESHOLD), or a worker would never collect a cycle."""
    import conftest  # noqa: PLC0415

    assert gc.isenabled()
    assert gc.get_threshold() == conftest.GC_THRESHOLD
    assert gc.get_freeze_count() > 100_000  # JAX's, TensorFlow's and the test files' objects.
