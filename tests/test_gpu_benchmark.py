"""The GPU benchmark (benchmarks/gpu.py) on the CPU with --tiny: the same code path a GPU runs,
so it cannot rot before a GPU is lent. It writes every row and field it promises, the markdown
table has a line per row and the goals' columns, the command line answers --help and
--dry_run, a child process reports back, and the demo's end, timeout and failure are reported.

Not run here: torch.compile (minutes of C++ compilation on this CPU; --tiny leaves it out and
says so in its rows), the real demo (data building and pretraining take ~2 minutes here; a
stand-in command writes its summary), bfloat16 and float32 both (the dtype is a string to the
same code: bfloat16 only)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from absl import app, flags

from benchmarks import gpu

REPO = pathlib.Path(__file__).resolve().parent.parent
FIELDS = (
    "model", "label", "batch", "dtype", "remat", "framework", "mode", "status", "note",
    "step_ms", "images_per_s", "mfu_pct", "peak_memory_gib", "vs_torch_compile",
    "vs_torch_eager", "goal_vs_compile", "goal_vs_eager", "goal_mfu", "kept_mib_per_image",
)  # fmt: skip
VERDICTS = {"pass", "FAIL", "n/a", "n/a (bf16)", "—"}
# Stands in for `python -m richft_jax.main --config=demo:tiny --workdir=W`: logs progress and
# writes the summary.json the real run writes.
FAKE_DEMO = (
    "import json, pathlib, sys; print('Setting work unit notes: (20/20)', file=sys.stderr); "
    "pathlib.Path(sys.argv[1], 'summary.json').write_text(json.dumps({'wall_time_s': 1.5, "
    "'num_steps': 20, 'selected': {'ood_accuracy': 0.25}}))"
)


def options(*args: str) -> gpu.Options:
    flag_values = flags.FlagValues()
    gpu.define_flags(flag_values)
    flag_values(["gpu", *args])
    return gpu.resolve(flag_values)


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} in the JSON")

    return json.loads(text, parse_constant=refuse)


def test_tiny_run_writes_every_row_field_and_goal(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "demo_command", lambda mode, wd: [sys.executable, "-c", FAKE_DEMO, wd])
    opts = options("--tiny", "--dtype=bfloat16", f"--out_dir={tmp_path}", "--budget_s=0")
    assert (opts.batches, opts.image_size, opts.steps, opts.isolate) == ((4,), 32, 2, False)
    gpu.run_all(opts, "bash benchmarks/gpu.sh --tiny")
    report = strict_json((tmp_path / "gpu_benchmark_tiny.json").read_text())
    rows = report["rows"]

    expected = [r for g in gpu.plan(opts) if g != "demo" for r in gpu.expected_rows(opts, g)]
    assert sorted(map(gpu.row_key, rows)) == sorted(
        map(gpu.row_key, [*expected, gpu.demo_row("tiny")])
    )
    # ResNet: JAX, compile, eager, channels-last; ViT: JAX, JAX with jax.nn attention (xla),
    # compile, eager, remat; the demo.
    assert len(rows) == 10
    for r in rows:
        assert set(FIELDS) <= set(r), set(FIELDS) - set(r)
        assert {r["goal_vs_compile"], r["goal_vs_eager"], r["goal_mfu"]} <= VERDICTS, r
        if r["mode"] == "compile":  # Left out on a CPU, and the row says why.
            assert r["status"] == "skipped" and "--tiny" in r["note"], r
            continue
        assert r["status"] == "ok", r
        if r["mode"] == "demo":
            assert r["wall_s"] > 0 and r["train_wall_s"] == 1.5 and r["ood_accuracy"] == 0.25
            continue
        for key in ("step_ms", "images_per_s", "mfu_pct", "peak_memory_gib", "vs_torch_eager"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["step_ms"] == pytest.approx(1000 * r["batch"] / r["images_per_s"])
        if r["framework"] == "jax" or r["mode"] == "eager":  # What the backward pass keeps.
            assert r["kept_mib_per_image"] > 0, r
        if r["framework"] == "jax":  # Where its time goes: XLA op kinds, ms per step.
            assert len(r["top_ops_ms"]) == gpu.PROFILE_TOP, r["top_ops_ms"]
            assert all(ms > 0 for ms in r["top_ops_ms"].values()), r["top_ops_ms"]
        assert r["vs_torch_compile"] is None  # No torch.compile row measured.
        assert r["wall_s"] > 0, r  # What each measurement took, for planning a GPU's time.
        assert (r["setup_s"] > 0) if r["framework"] == "jax" else ("setup_s" not in r), r
    took = gpu.seconds_taken([r for r in rows if r["model"] == "vit_b16" and not r["remat"]])
    assert took.startswith(" (JAX jit ") and " s setup + " in took, took
    assert "JAX jit (xla attention) " in took and "torch eager " in took, took

    peak = report["meta"]["peak_bf16_tflops"] * 1e12
    by_mode = {(r["model"], r["mode"], r["remat"]): r for r in rows}
    for model in ("resnet50", "vit_b16"):
        jax = by_mode[(model, "jit", False)]
        eager = [
            r["images_per_s"]
            for k, r in by_mode.items()
            if k[0] == model and r["framework"] == "torch"
        ]
        eager = [v for v in eager if v]
        assert jax["vs_torch_eager"] == pytest.approx(jax["images_per_s"] / max(eager))
        mfu = 100 * jax["gflops_per_step"] * 1e9 * jax["images_per_s"] / jax["batch"] / peak
        assert jax["mfu_pct"] == pytest.approx(mfu)
        assert jax["goal_vs_eager"] in ("pass", "FAIL") and jax["goal_mfu"] in ("pass", "FAIL")
        assert jax["goal_vs_compile"] == "n/a"
    # remat: MFU from the plain step's FLOPs; the remat step's own count has the recompute.
    remat, plain = by_mode[("vit_b16", "jit", True)], by_mode[("vit_b16", "jit", False)]
    assert remat["gflops_per_step"] > plain["gflops_per_step"]
    assert remat["mfu_pct"] == pytest.approx(
        plain["mfu_pct"] * remat["images_per_s"] / plain["images_per_s"]
    )
    assert remat["goal_vs_eager"] == "—"
    # The ViT with jax.nn.dot_product_attention: its own row, judged against the same torch
    # rows, its MFU from the plain step's FLOPs (the same function).
    fused = by_mode[("vit_b16", "jit_xla", False)]
    assert fused["vs_torch_eager"] == pytest.approx(
        plain["vs_torch_eager"] * fused["images_per_s"] / plain["images_per_s"]
    )
    assert fused["mfu_pct"] == pytest.approx(
        plain["mfu_pct"] * fused["images_per_s"] / plain["images_per_s"]
    )
    assert fused["goal_vs_eager"] in ("pass", "FAIL")
    vit_eager = [g for g in report["goals"] if g["goal"] == "vs_torch_eager"][-1]
    assert set(vit_eager["measured"]) == {"bfloat16 batch 4", "bfloat16 batch 4 (xla attention)"}
    assert [(g["model"], g["goal"]) for g in report["goals"]] == [
        (gpu.TINY_MODELS[m].label, goal)
        for m in ("resnet50", "vit_b16")
        for goal in ("vs_torch_compile", "vs_torch_eager", "mfu_pct")
    ]

    md = (tmp_path / "gpu_benchmark_tiny.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, separator, a line per row
    for column in ("step ms", "images/s", "MFU %", "peak GiB", "× torch.compile"):
        assert column in table[0], column
    for column in ("× torch eager", "≥ 1.0× compile", "≥ 1.2× eager", "MFU goal"):
        assert column in table[0], column
    assert all(line.count("|") == len(gpu.COLUMNS) + 1 for line in table)
    assert "Goals: JAX ≥ 1.0× torch.compile" in md
    assert "**pass**" in md or "**FAIL**" in md
    jax_rows = [r for r in rows if r["framework"] == "jax" and r["mode"] != "demo"]
    ops = md.split("XLA ops of each JAX step (ms per step, largest first):\n", 1)[1]
    assert len([line for line in ops.splitlines() if line.startswith("- ")]) == len(jax_rows)


def test_gpu_sh_help_and_dry_run_exit_0():
    """No JAX started: --help lists the flags, --dry_run the GPU plan."""
    run = lambda *a: subprocess.run(  # noqa: E731
        ["bash", "benchmarks/gpu.sh", *a], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    help_ = run("--help")
    assert help_.returncode == 0, help_.stderr
    for name in ("--tiny", "--budget_s", "--out_dir", "--demo", "--[no]isolate"):
        assert name in help_.stdout, name
    plan = run("--dry_run", "--out_dir=/tmp/nowhere")
    assert plan.returncode == 0, plan.stderr
    for line in (
        " 1. ResNet-50 bfloat16, batch 96: JAX jit, torch.compile, torch eager, torch eager "
        "(channels-last) [own process]",
        " 2. ViT-B/16 bfloat16, batch 96: JAX jit, JAX jit (cuDNN attention), torch.compile, "
        "torch eager [own process]",
        " 4. ViT-B/16 bfloat16, batch 256:",
        " 6. ViT-B/16 bfloat16 remat, batch 256: JAX jit [own process]",
        " 7. demo: python -m richft_jax.main --config=demo:tiny",
        " 8. ResNet-50 float32, batch 96: JAX jit, torch.compile (not run)",
        "11. ViT-B/16 float32, batch 256:",
        "33 rows -> /tmp/nowhere/gpu_benchmark.json and /tmp/nowhere/gpu_benchmark.md",
        "Missing packages: none",
    ):
        assert line in plan.stdout, (line, plan.stdout)


def test_child_process_reports_back_and_refuses_full_size_on_cpu(tmp_path):
    """A group in its own process (as on a GPU): its records come back as JSON lines; at full
    size on a CPU the child refuses, and the parent raises, naming --tiny."""
    tiny = options("--tiny", f"--out_dir={tmp_path}")
    records, failure = gpu.run_isolated(
        tiny, gpu.Group("resnet50", "float32", False, ()), 1e12, 120
    )
    assert failure is None
    assert [r["kind"] for r in records] == ["device"] and records[0]["platform"] == "cpu"
    assert records[0]["torch"]["available"] is True
    full = options(f"--out_dir={tmp_path}")
    with pytest.raises(gpu.NoAccelerator, match="--tiny"):
        gpu.run_part(full, gpu.Group("resnet50", "bfloat16", False, (96,)), {}, 120)


@pytest.mark.parametrize(
    "script, status, note",
    [
        ("import sys, time; print('(3/900)', file=sys.stderr, flush=True); time.sleep(60)",
         "timeout", "reached step 3/900"),
        ("import sys; print('(7/20)\\nboom', file=sys.stderr); sys.exit(1)",
         "error", "failed, reached step 7/20 (log): (7/20) | boom"),
    ],
)  # fmt: skip
def test_demo_timeout_and_failure_are_reported(monkeypatch, script, status, note):
    monkeypatch.setattr(gpu, "demo_command", lambda mode, wd: [sys.executable, "-c", script])
    monkeypatch.setattr(gpu, "DEMO_MIN_S", 0)
    row = gpu.run_demo("full", 3)
    assert row["status"] == status and row["wall_s"] > 0
    assert note in row["note"], row["note"]
    assert gpu.run_demo("none", 100)["status"] == "skipped"


def test_torch_missing_or_without_cuda_is_said_in_its_rows():
    no_torch = {
        "platform": "gpu",
        "torch": {"available": False, "reason": "torch is not installed"},
    }
    assert gpu.torch_unavailable(no_torch) == "torch is not installed"
    cpu_torch = {
        "platform": "gpu",
        "torch": {"available": True, "version": "2.x+cpu", "cuda": None},
    }
    assert "has no CUDA" in gpu.torch_unavailable(cpu_torch)
    assert gpu.torch_unavailable({**cpu_torch, "platform": "cpu"}) is None
    opts = options("--tiny")
    group = gpu.Group("vit_b16", "bfloat16", False, (4,))
    rows = [r for r in gpu.expected_rows(opts, group) if r["framework"] == "torch"]
    skipped = gpu.torch_rows(None, rows, opts, group, cpu_torch)
    assert [r["status"] for r in skipped] == ["skipped", "skipped"]
    assert all("has no CUDA" in r["note"] for r in skipped)


def test_allocator_peak_that_did_not_rise_falls_back_to_xla_memory():
    """The GPU allocator's peak is never reset in a process: a reading that did not rise is
    an earlier step's, and XLA's compiled memory of this step is reported instead."""
    peak = gpu.JaxPeak()
    device = lambda mb: {"jax_peak_memory_mb": mb, "jax_memory_source": "device memory_stats"}  # noqa: E731
    assert peak(device(2048), 1) == (2.0, "device memory_stats")
    gib, source = peak(device(2048), 512 * 2**20)
    assert gib == 0.5 and source.startswith("XLA compiled memory")
    assert peak(device(4096), 1)[0] == 4.0
    rss = {"jax_peak_memory_mb": 10, "jax_memory_source": "state + batch + peak RSS growth"}
    assert peak(rss, None) == (10 / 1024, rss["jax_memory_source"])


def test_ratios_and_goals_of_a_measured_configuration():
    """JAX 1000 img/s against torch.compile 900 (1.11x: pass) and the faster eager layout 850
    (1.18x < 1.2: FAIL); bf16 MFU 40 % against ResNet-50's 35 % (pass); fp32: no MFU goal."""
    opts = options()
    base = {"model": "resnet50", "label": "ResNet-50", "batch": 100, "remat": False}
    base |= {"framework": "torch", "status": "ok", "note": ""}
    rows = [
        base | {"framework": "jax", "mode": "jit", "images_per_s": 1000.0, "gflops_per_step": 400},
        base | {"mode": "compile", "images_per_s": 900.0},
        base | {"mode": "eager", "images_per_s": 800.0},
        base | {"mode": "channels_last", "images_per_s": 850.0},
    ]
    rows = [r | {"dtype": d} for d in ("bfloat16", "float32") for r in rows]
    report = gpu.finalize(rows, {"peak_flops": 1e13}, opts)
    jax = [r for r in report["rows"] if r["mode"] == "jit"]
    assert [r["dtype"] for r in jax] == ["bfloat16", "float32"]
    assert jax[0]["vs_torch_compile"] == pytest.approx(1000 / 900)
    assert jax[0]["vs_torch_eager"] == pytest.approx(1000 / 850)
    assert jax[0]["mfu_pct"] == pytest.approx(40.0) and jax[0]["step_ms"] == pytest.approx(100)
    assert (jax[0]["goal_vs_compile"], jax[0]["goal_vs_eager"], jax[0]["goal_mfu"]) == (
        "pass",
        "FAIL",
        "pass",
    )
    assert jax[1]["goal_mfu"] == "n/a (bf16)"
    goals = {g["goal"]: g["status"] for g in report["goals"] if g["model"] == "ResNet-50"}
    assert goals == {"vs_torch_compile": "pass", "vs_torch_eager": "FAIL", "mfu_pct": "pass"}
    vit = {g["goal"]: g["status"] for g in report["goals"] if g["model"] == "ViT-B/16"}
    assert set(vit.values()) == {"not measured"}
    eager = next(r for r in report["rows"] if r["mode"] == "eager")
    assert eager["vs_torch_compile"] == pytest.approx(800 / 900) and eager["goal_mfu"] == "—"


# As on the GPU image, which has JAX, flax, optax and torch but no TensorFlow or TFDS: importing
# either raises ModuleNotFoundError and importlib.util.find_spec returns None.
NO_TENSORFLOW = (
    "import sys\nfor name in ('tensorflow', 'tensorflow_datasets'):\n    sys.modules[name] = None\n"
)
STEP_WITHOUT_TF = """
import sys
from benchmarks import gpu, throughput
bench = throughput.setup("vit_b16", 2, 32, "float32", False, 1, gpu.TINY_VIT)
bench.run_step(0.9)
assert sys.modules["tensorflow"] is None and sys.modules["tensorflow_datasets"] is None
print("missing:", gpu.missing_packages(), gpu.missing_packages(gpu.DEMO_REQUIRED))
"""


def test_train_steps_run_on_a_python_without_tensorflow(tmp_path):
    """The model, optimizer and jitted step import no TensorFlow (data/pixels.py holds the one
    image transform they need), so the benchmark runs on a GPU image without it."""
    (tmp_path / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"}
    proc = subprocess.run(
        [sys.executable, "-c", STEP_WITHOUT_TF], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "missing: [] ['tensorflow', 'tensorflow_datasets']" in proc.stdout
    plan = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--dry_run"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "Missing packages: none" in plan.stdout
    assert "demo will be skipped: this Python lacks tensorflow, tensorflow_datasets" in plan.stdout


def test_demo_is_skipped_and_says_so_without_its_packages(monkeypatch):
    monkeypatch.setattr(gpu, "DEMO_REQUIRED", ("tensorflow", "no_such_package_richft"))
    monkeypatch.setattr(gpu, "demo_command", lambda mode, wd: pytest.fail("demo started"))
    row = gpu.run_demo("tiny", 100)
    assert row["status"] == "skipped"
    assert row["note"] == "this Python lacks no_such_package_richft"


def test_vit_attention_flag_is_checked_and_sized():
    assert options().attention == ("cudnn",) and options("--tiny").attention == ("xla",)
    assert options("--vit_attention=").attention == ()
    with pytest.raises(app.UsageError, match=r"--vit_attention \['flash'\]"):
        options("--vit_attention=flash")
    # Attention rows only for the ViT in bf16.
    opts = options("--vit_attention=xla,cudnn")
    vit = [m for _, m in gpu.modes(opts, gpu.Group("vit_b16", "bfloat16", False, (96,)))]
    assert vit[:3] == ["jit", "jit_xla", "jit_cudnn"]
    assert "jit_xla" not in [
        m for _, m in gpu.modes(opts, gpu.Group("vit_b16", "float32", False, (96,)))
    ]
    assert "jit_xla" not in [
        m for _, m in gpu.modes(opts, gpu.Group("resnet50", "bfloat16", False, (96,)))
    ]
