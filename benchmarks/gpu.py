"""GPU benchmark: ResNet-50 and ViT-B/16 train steps, JAX against PyTorch on the same GPU.

  bash benchmarks/gpu.sh --out_dir="$OUT"          # a GPU machine, under 5 minutes
  bash benchmarks/gpu.sh --tiny --out_dir=/tmp/b   # any machine (CPU): tiny shapes, same path
  bash benchmarks/gpu.sh --dry_run                 # the plan and the goals, nothing run

Train steps at 224 px, batch 96 (the paper's 3 x 32) and 256, bf16 and fp32 (TF32 matmuls on
both sides), ViT-B/16 also with rematerialisation (config.model.kwargs.remat) and, in bf16,
with jax.nn.dot_product_attention (--vit_attention, default cudnn; --tiny: xla): the JAX step
(throughput.setup: the library's model, optimizer and jitted step) against the PyTorch twin in
eager mode, channels-last (ResNet) and torch.compile (throughput.time_torch). Per row: step
ms, images/s, MFU against this GPU's measured bf16 matmul peak (a jitted 8192² matmul), peak
memory (JAX: memory_stats()["peak_bytes_in_use"]; torch: max_memory_allocated), the ratios to
torch.compile and to torch eager, and pass/fail against the goals. Then the embedded demo end
to end (`python -m richft_jax.main --config=demo:tiny`, wall time). Writes
OUT_DIR/gpu_benchmark.json and OUT_DIR/gpu_benchmark.md (one table), rewritten after each part.

Under --budget_s the parts run in priority order (bf16 at batch 96, then 256, then remat; the
demo; fp32); what does not fit is listed as skipped. On a GPU each backbone/dtype/remat/batch
runs in its own process (a clean allocator peak; an out-of-memory error or a crash costs only
its rows). Torch missing or without CUDA: the torch rows say so. No GPU: --tiny runs it all on
the CPU.
"""

import dataclasses
import datetime
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
GOALS = {"vs_compile": 1.0, "vs_eager": 1.2}
GOALS_TEXT = (
    "JAX ≥ 1.0× torch.compile and ≥ 1.2× torch eager (the faster of NCHW and channels-last) "
    "for both backbones; bf16 MFU ≥ 45 % for ViT-B/16 and ≥ 35 % for ResNet-50, on an "
    "H100-class GPU"
)
MIN_GROUP_S = 30  # A group is not started with less of the budget left.
DEMO_MIN_S = 10  # Nor the demo.
# Table order within a configuration; jit_<impl>: the ViT with jax.nn.dot_product_attention.
MODES = ("jit", "jit_cudnn", "jit_xla", "compile", "eager", "channels_last")
PROFILE_STEPS, PROFILE_TOP = 3, 8  # Each JAX row's XLA ops: steps traced, kinds kept.
UNMEASURED = {
    "images_per_s": None,
    "peak_memory_gib": None,
    "memory_source": None,
    "kept_mib_per_image": None,  # What the step keeps for its backward pass (eager torch, JAX).
}


@dataclasses.dataclass(frozen=True)
class Model:
    """A benchmarked backbone: the registry name and kwargs of the JAX model, its PyTorch twin
    (None: the same name and kwargs), whether it is a convnet, remat support, the MFU goal."""

    label: str
    jax: str
    kwargs: dict
    twin: tuple[str, dict] | None
    convnet: bool
    remat: bool
    mfu_goal: float


MODELS = {
    "resnet50": Model("ResNet-50", "resnet50", {}, None, True, False, 0.35),
    "vit_b16": Model("ViT-B/16", "vit_b16", {}, None, False, True, 0.45),
}
# --tiny: the same two families at toy sizes (the tiny ViT keeps the ViT-B/16 layout, so its
# remat is the real one; its torch twin is torch_twins.ViT with a [CLS] token).
TINY_VIT = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 4, "patch_size": 8}
TINY_TWIN = {"patch": 8, "dim": 32, "depth": 2, "heads": 4, "mlp_ratio": 2}
TINY_MODELS = {
    "resnet50": Model(
        "small ResNet (tiny)",
        "small_resnet",
        {"widths": (8, 8, 16, 16), "blocks": (1, 1, 1, 1), "stem_stride": 2, "feature_dim": 32},
        None,
        True,
        False,
        0.35,
    ),
    "vit_b16": Model(
        "ViT-B/16 layout (tiny)",
        "vit_b16",
        TINY_VIT,
        ("small_vit", {**TINY_TWIN, "feature_dim": 0, "cls_token": True}),
        False,
        True,
        0.45,
    ),
}


@dataclasses.dataclass(frozen=True)
class Options:
    """The resolved command line (flags with the --tiny defaults applied); JSON to children."""

    tiny: bool
    models: tuple[str, ...]
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    remat_dtypes: tuple[str, ...]
    compile_dtypes: tuple[str, ...]
    steps: int
    image_size: int
    peak_size: int
    budget_s: float
    demo: str
    demo_timeout_s: float
    isolate: bool
    allow_cpu: bool
    out_dir: str
    stem: str
    attention: tuple[str, ...] = ()  # ViT rows with jax.nn.dot_product_attention (bf16).

    def model(self, key: str) -> Model:
        """The backbone `key` (resnet50, vit_b16) at this run's size."""
        return (TINY_MODELS if self.tiny else MODELS)[key]


@dataclasses.dataclass(frozen=True)
class Group:
    """One backbone in one dtype, with or without remat, at its batches: one process."""

    model: str
    dtype: str
    remat: bool
    batches: tuple[int, ...]


# ----------------------------------------------------------------------------- the plan
def plan(opts: Options) -> list[Group | str]:
    """The groups (a backbone, dtype, remat and batch each) and the demo ("demo") in priority
    order: bf16 (both backbones at each batch, then remat), the demo, then the other dtypes,
    so that a budget that runs out leaves the goals' rows measured."""

    def of_dtype(d: str) -> list[Group]:
        plain = [Group(m, d, False, (b,)) for b in opts.batches for m in opts.models]
        remat = [
            Group(m, d, True, (b,))
            for m in opts.models
            if opts.model(m).remat and d in opts.remat_dtypes
            for b in opts.batches
        ]
        return plain + remat

    first = of_dtype("bfloat16") if "bfloat16" in opts.dtypes else []
    return [*first, "demo", *[g for d in opts.dtypes if d != "bfloat16" for g in of_dtype(d)]]


def modes(opts: Options, group: Group) -> list[tuple[str, str]]:
    """(framework, mode) of a group's rows at one batch: JAX (the ViT in bf16 also with each
    --vit_attention implementation), then the torch variants."""
    if group.remat:
        return [("jax", "jit")]
    convnet = opts.model(group.model).convnet
    fused = [] if convnet or group.dtype != "bfloat16" else [f"jit_{a}" for a in opts.attention]
    torch = ["compile", "eager", *(["channels_last"] if convnet else [])]
    return [("jax", m) for m in ("jit", *fused)] + [("torch", m) for m in torch]


def row_base(opts: Options, group: Group, batch: int, framework: str, mode: str) -> dict:
    """What a row is (no measurement yet)."""
    return {
        "model": group.model,
        "label": opts.model(group.model).label,
        "batch": batch,
        "image_size": opts.image_size,
        "dtype": group.dtype,
        "remat": group.remat,
        "framework": framework,
        "mode": mode,
        "status": "not run",
        "note": "",
        **UNMEASURED,
    }


def expected_rows(opts: Options, group: Group) -> list[dict]:
    """Every row a group reports, unmeasured."""
    return [
        row_base(opts, group, b, fw, mode) for b in group.batches for fw, mode in modes(opts, group)
    ]


def describe(opts: Options, part: Group | str) -> str:
    """A plan entry in words: `ViT-B/16 bfloat16 remat, batch 96/256`, or `demo`."""
    if part == "demo":
        return f"demo:{opts.demo}"
    remat = " remat" if part.remat else ""
    batches = "/".join(map(str, part.batches))
    return f"{opts.model(part.model).label} {part.dtype}{remat}, batch {batches}"


def row_key(row: dict) -> tuple:
    """What identifies a row: model, batch, dtype, remat, framework, mode."""
    return tuple(row[k] for k in ("model", "batch", "dtype", "remat", "framework", "mode"))


# ----------------------------------------------------------------------------- measuring (JAX)
def device_info(opts: Options) -> dict:
    """Platform, device and versions; refuses full shapes on a CPU unless --allow_cpu."""
    import jax  # noqa: PLC0415 (not in the parent process of a GPU run)

    device = jax.devices()[0]
    if device.platform == "cpu" and not (opts.tiny or opts.allow_cpu):
        raise NoAccelerator(
            "No GPU: ResNet-50 / ViT-B/16 at 224 px take minutes a step on a CPU. Run with "
            "--tiny (tiny shapes, the same code path) or --allow_cpu."
        )
    info = {"platform": device.platform, "device_kind": device.device_kind}
    info["jax_version"] = jax.__version__
    info["torch"] = torch_info()
    return info


class NoAccelerator(RuntimeError):
    """A full-size run on a machine without a GPU."""


def torch_info() -> dict:
    """torch's version and CUDA, or why there is no torch."""
    if importlib.util.find_spec("torch") is None:
        return {"available": False, "reason": "torch is not installed (pip install -e .[bench])"}
    try:
        import torch  # noqa: PLC0415 (optional dependency)
    except Exception as e:  # noqa: BLE001 (e.g. built against other CUDA libraries)
        return {"available": False, "reason": f"torch does not import: {short(e)}"}
    cuda = torch.cuda.is_available()
    return {
        "available": True,
        "version": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def torch_unavailable(info: dict) -> str | None:
    """Why the torch rows cannot be measured here (None: they can)."""
    torch = info["torch"]
    if not torch["available"]:
        return torch["reason"]
    if info["platform"] == "gpu" and torch["cuda"] is None:
        return f"torch {torch['version']} has no CUDA (its CPU is no match for this GPU)"
    return None


def measure_peak(opts: Options) -> float:
    """This device's bf16 matmul peak, FLOP/s: a jitted --peak_size² matmul (harness)."""
    import jax.numpy as jnp  # noqa: PLC0415

    from benchmarks import throughput  # noqa: PLC0415 (imports JAX and TensorFlow)

    return throughput.matmul_peak(opts.peak_size, 50 if not opts.tiny else 3, jnp.bfloat16)


class JaxPeak:
    """The allocator's peak is never reset in a process (one step per process on a GPU; with
    --noisolate, a step whose reading did not rise reports XLA's compiled memory instead)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, memory: dict, compiled_bytes: int | None) -> tuple[float | None, str]:
        mb, source = memory["jax_peak_memory_mb"], memory["jax_memory_source"]
        if source.startswith("device") and mb is not None:
            if mb <= self.last:
                mb = None if compiled_bytes is None else compiled_bytes / 2**20
                source = "XLA compiled memory (allocator peak is from an earlier, larger step)"
            else:
                self.last = mb
        return (None if mb is None else mb / 1024), source


PROCESS_PEAK = JaxPeak()  # This process's allocator readings.


def jax_row(bench: Any, row: dict, opts: Options, peak: float, tracker: JaxPeak) -> dict:
    """The JAX step: compiled once (compiled_step), timed at dropout 0.9, FLOPs and memory."""
    import jax.numpy as jnp  # noqa: PLC0415

    from benchmarks import throughput  # noqa: PLC0415

    batch = row["batch"]
    _, costs = throughput.compiled_step(bench)  # The jitted step reuses this compile.
    timing = throughput.time_train_step(bench, opts.steps)
    images_per_s = timing["train_images_per_s_dropout0.9"]
    flops = throughput.model_flops(
        bench.step, bench.state, bench.dev_batch, jnp.float32(0.9), bench.lr
    )
    util = throughput.flop_utilisation(flops, images_per_s, batch, peak)
    gib, source = tracker(throughput.step_memory(bench, costs["peak_bytes"]), costs["peak_bytes"])
    try:
        ops = throughput.profile_ops(lambda: bench.run_step(0.9), PROFILE_STEPS)[:PROFILE_TOP]
        top_ops = {kind: round(ms, 3) for kind, ms in ops}
    except Exception as e:  # noqa: BLE001 (a profiler problem costs only this field)
        top_ops = {"not profiled": short(e)}
    return row | {
        "top_ops_ms": top_ops,
        "status": "ok",
        "images_per_s": images_per_s,
        "gflops_per_step": flops / 1e9,
        "xla_gflops_per_step": (costs["lowered_flops"] or costs["flops"]) / 1e9,
        "hfu_pct": 100 * util["mfu"],
        "peak_memory_gib": gib,
        "memory_source": source,
        "kept_mib_per_image": throughput.saved_activation_mb(bench),
        "dropout_overhead": timing["dropout_overhead"],
    }


# ----------------------------------------------------------------------------- measuring (torch)
def compile_skipped(opts: Options, dtype: str) -> str:
    """Why torch.compile is not run for `dtype`."""
    if opts.tiny and not opts.compile_dtypes:
        return (
            "not run: --tiny leaves torch.compile out (minutes of C++ compilation on a CPU); "
            "--torch_compile_dtypes=bfloat16,float32 runs it"
        )
    return f"not run: {dtype} is not in --torch_compile_dtypes={','.join(opts.compile_dtypes)}"


def short(error: BaseException) -> str:
    """An exception in one line (XLA's out-of-memory messages run to pages)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:240] if text else ''}"


def torch_rows(bench: Any, rows: list[dict], opts: Options, group: Group, info: dict) -> list:
    """The torch twin's variants on the JAX benchmark's batch (throughput.time_torch); the
    allocator's cache is handed back afterwards, for the JAX step that follows."""
    reason = torch_unavailable(info)
    if reason:
        return [r | {"status": "skipped", "note": reason} for r in rows]
    import torch  # noqa: PLC0415 (optional dependency)

    from benchmarks import throughput  # noqa: PLC0415

    if info["platform"] == "gpu":
        torch.set_float32_matmul_precision("high")  # fp32 as XLA's default: TF32 matmuls.
        torch.backends.cudnn.benchmark = True  # Autotuned convolutions, as XLA's.
    compile_ = group.dtype in opts.compile_dtypes
    twin = opts.model(group.model).twin
    try:
        out = throughput.time_torch(bench, opts.steps, compile_, math.nan, twin)
    except Exception as e:  # noqa: BLE001 (reported in the rows, the run goes on)
        return [r | {"status": "error", "note": short(e)} for r in rows]
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    measured = []
    for r in rows:
        images_per_s = out.get(f"torch_{r['mode']}_images_per_s")
        mb = out.get(f"torch_{r['mode']}_peak_memory_mb")
        if r["mode"] == "compile" and not compile_:
            r = r | {"status": "skipped", "note": compile_skipped(opts, group.dtype)}
        elif images_per_s:
            r = r | {
                "status": "ok",
                "images_per_s": images_per_s,
                "peak_memory_gib": None if mb is None else mb / 1024,
                "memory_source": out.get("torch_memory_source"),
                "wall_s": out.get(f"torch_{r['mode']}_wall_s"),
                "kept_mib_per_image": (
                    out.get("torch_saved_activation_mb_per_image") if r["mode"] == "eager" else None
                ),
                "note": f"torch {out['torch_version']} on {out['torch_device']}",
            }
        else:
            r = r | {"status": "error", "note": out.get(f"torch_{r['mode']}_error", "no result")}
        measured.append(r)
    return measured


# ----------------------------------------------------------------------------- one group
def config_rows(
    opts: Options, group: Group, batch: int, peak: float, info: dict, tracker: JaxPeak
) -> list[dict]:
    """One batch size of a group: torch first (it hands its memory back), then JAX, the plain
    step and then each attention variant, one train state on the device at a time."""
    from benchmarks import throughput  # noqa: PLC0415

    model = opts.model(group.model)
    rows = [row_base(opts, group, batch, fw, mode) for fw, mode in modes(opts, group)]
    jax_rows = [r for r in rows if r["framework"] == "jax"]
    torch_rows_ = [r for r in rows if r["framework"] == "torch"]

    def bench_of(mode: str) -> Any:
        kwargs = model.kwargs | ({"attention": mode[4:]} if mode != "jit" else {})
        return throughput.setup(
            model.jax, batch, opts.image_size, group.dtype, group.remat, 1, kwargs
        )

    try:
        start = time.monotonic()
        bench, setup_s = bench_of("jit"), time.monotonic() - start
    except Exception as e:  # noqa: BLE001
        return [r | {"status": "error", "note": short(e)} for r in rows]
    torch = torch_rows(bench, torch_rows_, opts, group, info) if torch_rows_ else []
    measured = [timed_jax_row(lambda: bench, setup_s, jax_rows[0], opts, peak, tracker)]
    bench = None  # Its state leaves the device before the next variant's.
    for row in jax_rows[1:]:
        measured.append(
            timed_jax_row(lambda m=row["mode"]: bench_of(m), None, row, opts, peak, tracker)
        )
    return [*measured, *torch]


def timed_jax_row(
    make_bench: Callable[[], Any],
    setup_s: float | None,
    row: dict,
    opts: Options,
    peak: float,
    tracker: JaxPeak,
) -> dict:
    """jax_row with the seconds its setup (`setup_s`, or make_bench's) and measuring took, for
    planning a GPU session's budget; an error (out of memory, an attention implementation the
    device lacks) stays in this row."""
    try:
        start = time.monotonic()
        bench = make_bench()
        setup_s = time.monotonic() - start if setup_s is None else setup_s
        start = time.monotonic()
        out = jax_row(bench, row, opts, peak, tracker)
    except Exception as e:  # noqa: BLE001
        return row | {"status": "error", "note": short(e)}
    return out | {"setup_s": setup_s, "wall_s": time.monotonic() - start}


def run_group(
    opts: Options, group: Group, peak: float | None, emit: Callable[[dict], None], deadline: float
) -> None:
    """A group's records through `emit`: the device, the matmul peak (when not given), then
    its rows a batch at a time, smallest first, until `deadline` (time.monotonic)."""
    info = device_info(opts)
    emit({"kind": "device", **info})
    if peak is None:
        peak = measure_peak(opts)
        emit({"kind": "peak", "flops": peak})
    for batch in sorted(group.batches):
        if time.monotonic() > deadline:
            return
        for row in config_rows(opts, group, batch, peak, info, PROCESS_PEAK):
            emit({"kind": "row", **row})


def child(spec_json: str, out_path: str) -> None:
    """A group in this process (the parent's isolated child): JSON lines into `out_path`."""
    spec = json.loads(spec_json)
    opts = options_from_dict(spec["opts"])
    group = Group(**{**spec["group"], "batches": tuple(spec["group"]["batches"])})
    with open(out_path, "a", encoding="utf-8") as fh:

        def emit(record: dict) -> None:
            fh.write(json.dumps(finite(record)) + "\n")
            fh.flush()

        try:
            run_group(opts, group, spec["peak"], emit, time.monotonic() + spec["time_left_s"])
        except NoAccelerator as e:
            emit({"kind": "fatal", "message": str(e)})
            sys.exit(3)


def options_from_dict(d: dict) -> Options:
    """Options from their JSON (lists back to tuples)."""
    return Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def finite(x: Any) -> Any:
    """`x` with NaN and infinities as None (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


# ----------------------------------------------------------------------------- the parent
def child_env() -> dict:
    """A child's environment: JAX allocates on demand (torch shares the GPU), TF quiet."""
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_isolated(
    opts: Options, group: Group, peak: float | None, time_left: float
) -> tuple[list[dict], str | None]:
    """A group in a child process (`--child`): its records, and why it stopped early."""
    spec = {"opts": dataclasses.asdict(opts), "group": dataclasses.asdict(group)}
    spec |= {"peak": peak, "time_left_s": max(time_left - 10, 1)}
    with tempfile.TemporaryDirectory(prefix="richft_gpu_") as tmp:
        out = pathlib.Path(tmp) / "records.jsonl"
        cmd = [sys.executable, "-m", "benchmarks.gpu", f"--child={json.dumps(spec)}"]
        cmd.append(f"--child_out={out}")
        failure = None
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=time_left
            )
            if proc.returncode:
                tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
                failure = f"its process exited with {proc.returncode}: {tail}"
                print(f"  {group}: exit {proc.returncode}\n{proc.stderr[-3000:]}", flush=True)
        except subprocess.TimeoutExpired:
            failure = f"time budget: its process was stopped after {time_left:.0f} s"
        text = out.read_text(encoding="utf-8") if out.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()], failure


def run_inprocess(
    opts: Options, group: Group, peak: float | None, time_left: float
) -> tuple[list[dict], str | None]:
    """A group in this process (--tiny): its records, and why it stopped early."""
    records: list[dict] = []
    try:
        run_group(opts, group, peak, records.append, time.monotonic() + time_left)
    except NoAccelerator:
        raise
    except Exception as e:  # noqa: BLE001
        return records, short(e)
    return records, None


def run_part(opts: Options, group: Group, meta: dict, time_left: float) -> list[dict]:
    """A group's rows, measured or saying why not; device and peak records go to `meta`."""
    expected = expected_rows(opts, group)
    if time_left < MIN_GROUP_S:
        return [r | {"status": "skipped", "note": "time budget (--budget_s)"} for r in expected]
    runner = run_isolated if opts.isolate else run_inprocess
    records, failure = runner(opts, group, meta.get("peak_flops"), time_left)
    measured = {}
    for rec in records:
        kind = rec.pop("kind")
        if kind == "fatal":
            raise NoAccelerator(rec["message"])
        if kind == "device":
            meta["device"] = rec
        elif kind == "peak":
            meta["peak_flops"] = rec["flops"]
        else:
            measured[row_key(rec)] = rec
    note = failure or "time budget (--budget_s)"
    return [measured.get(row_key(r), r | {"note": note}) for r in expected]


# ----------------------------------------------------------------------------- the demo
def demo_command(mode: str, workdir: str) -> list[str]:
    """The embedded demo's command line (`demo:tiny` or the full `demo`)."""
    config = "demo:tiny" if mode == "tiny" else "demo"
    return [sys.executable, "-m", "richft_jax.main", f"--config={config}", f"--workdir={workdir}"]


def demo_row(mode: str) -> dict:
    """The demo's row, unmeasured."""
    return {
        "model": "demo",
        "label": f"demo:{mode} (small ResNet, digits; end to end)" if mode != "none" else "demo",
        "batch": None,
        "image_size": 32,
        "dtype": "auto",
        "remat": False,
        "framework": "jax",
        "mode": "demo",
        "status": "not run",
        "note": "",
        **UNMEASURED,
    }


def run_demo(mode: str, timeout_s: float) -> dict:
    """The demo end to end in a fresh workdir (data from its usual cache, built first on a fresh
    machine; the backbone shipped with the package): wall time, its train_and_evaluate time,
    accuracy."""
    row = demo_row(mode)
    if mode == "none":
        return row | {"status": "skipped", "note": "--demo=none"}
    if timeout_s < DEMO_MIN_S:
        return row | {"status": "skipped", "note": "time budget (--budget_s)"}
    if missing := missing_packages(DEMO_REQUIRED):
        return row | {"status": "skipped", "note": f"this Python lacks {', '.join(missing)}"}
    with tempfile.TemporaryDirectory(prefix="richft_gpu_demo_") as workdir:
        start = time.monotonic()
        try:
            proc = subprocess.run(
                demo_command(mode, workdir),
                cwd=REPO,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            log, status = proc.stderr + proc.stdout, "ok" if proc.returncode == 0 else "error"
        except subprocess.TimeoutExpired as e:
            log, status = _text(e.stderr) + _text(e.stdout), "timeout"
        row |= {"status": status, "wall_s": time.monotonic() - start}
        summary = pathlib.Path(workdir) / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text(encoding="utf-8"))
            row |= {"train_wall_s": s.get("wall_time_s"), "num_steps": s.get("num_steps")}
            row["ood_accuracy"] = (s.get("selected") or {}).get("ood_accuracy")
    return row | {"note": demo_note(row, log, timeout_s)}


def _text(stream: bytes | str | None) -> str:
    """A timed-out process's captured output as text (it can come back as bytes)."""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""


def demo_note(row: dict, log: str, timeout_s: float) -> str:
    """The demo row's note: the wall times and accuracy, or how far it got (from its log)."""
    progress = re.findall(r"\((\d+)/(\d+)\)", log)
    if row["status"] == "ok" and row.get("train_wall_s") is not None:
        return (
            f"{row['wall_s']:.1f} s end to end (train_and_evaluate {row['train_wall_s']:.1f} s, "
            f"{row['num_steps']} steps; OOD accuracy {row['ood_accuracy']:.3f}); includes "
            "building the data when its cache is empty (the backbone ships with the package)"
        )
    reached = f", reached step {progress[-1][0]}/{progress[-1][1]} (log)" if progress else ""
    if row["status"] == "timeout":
        return f"stopped at --demo_timeout_s / the budget ({timeout_s:.0f} s){reached}"
    tail = " | ".join(log.strip().splitlines()[-2:])[-300:]
    return f"failed{reached}: {tail}"


# ----------------------------------------------------------------------------- the report
def verdict(value: float | None, goal: float) -> str:
    """pass / FAIL against a goal, n/a when not measured."""
    if value is None:
        return "n/a"
    return "pass" if value >= goal else "FAIL"


def derive(row: dict, config: dict[str, dict], peak: float | None, opts: Options) -> dict:
    """A row's step ms, MFU, ratios and goal verdicts, from the rows of its configuration
    (`config`: mode -> the measured, non-remat rows of the same model, batch and dtype)."""
    ips, batch = row.get("images_per_s"), row["batch"]
    jax_row_, compile_ = config.get("jit"), config.get("compile")
    eager = [config[m]["images_per_s"] for m in ("eager", "channels_last") if m in config]
    model_flops = (jax_row_ or row).get("gflops_per_step")
    out = row | {"step_ms": 1000 * batch / ips if ips else None, "mfu_pct": None}
    if ips and model_flops and peak:
        out["mfu_pct"] = 100 * model_flops * 1e9 * ips / batch / peak
    out["vs_torch_compile"] = ips / compile_["images_per_s"] if ips and compile_ else None
    out["vs_torch_eager"] = ips / max(eager) if ips and eager else None
    goals = {"goal_vs_compile": "—", "goal_vs_eager": "—", "goal_mfu": "—"}
    if row["framework"] == "jax" and not row["remat"]:
        mfu_goal = opts.model(row["model"]).mfu_goal
        goals["goal_vs_compile"] = verdict(out["vs_torch_compile"], GOALS["vs_compile"])
        goals["goal_vs_eager"] = verdict(out["vs_torch_eager"], GOALS["vs_eager"])
        mfu = None if out["mfu_pct"] is None else out["mfu_pct"] / 100
        goals["goal_mfu"] = verdict(mfu, mfu_goal) if row["dtype"] == "bfloat16" else "n/a (bf16)"
    return out | goals


def goal_summary(rows: list[dict], opts: Options) -> list[dict]:
    """Per backbone and goal: the JAX rows' values and whether all of them pass."""
    summary = []
    for key in opts.models:
        model = opts.model(key)
        jax_rows = [
            r for r in rows if r["model"] == key and r["framework"] == "jax" and not r["remat"]
        ]
        for goal, field, target in (
            ("goal_vs_compile", "vs_torch_compile", GOALS["vs_compile"]),
            ("goal_vs_eager", "vs_torch_eager", GOALS["vs_eager"]),
            ("goal_mfu", "mfu_pct", 100 * model.mfu_goal),  # bf16 rows only (derive)
        ):
            judged = [r for r in jax_rows if r[goal] in ("pass", "FAIL")]
            status = "not measured" if not judged else "pass"
            if any(r[goal] == "FAIL" for r in judged):
                status = "FAIL"
            measured = {}
            for r in judged:  # "bfloat16 batch 96", + " (cuDNN attention)" for a variant.
                variant = MODE_LABELS[r["mode"]][len("JAX jit") :]
                measured[f"{r['dtype']} batch {r['batch']}{variant}"] = r[field]
            summary.append(
                {"model": model.label, "goal": field, "target": target}
                | {"measured": measured, "status": status}
            )
    return summary


def sort_key(opts: Options) -> Callable[[dict], tuple]:
    """Table order: backbone, batch, dtype, remat, then JAX, compile, eager, channels-last."""
    models = {m: i for i, m in enumerate(opts.models)}
    dtypes = {d: i for i, d in enumerate(opts.dtypes)}
    return lambda r: (
        r["model"] == "demo",
        models.get(r["model"], 0),
        r["batch"] or 0,
        dtypes.get(r["dtype"], 0),
        r["remat"],
        MODES.index(r["mode"]) if r["mode"] in MODES else 0,
    )


# The demo's row: no step, no ratio, no goal.
NOT_DERIVED = dict.fromkeys(("step_ms", "mfu_pct", "vs_torch_compile", "vs_torch_eager"))
NOT_DERIVED |= dict.fromkeys(("goal_vs_compile", "goal_vs_eager", "goal_mfu"), "—")


def finalize(rows: list[dict], meta: dict, opts: Options) -> dict:
    """The report: meta, the goals' summary, the rows with everything derived."""
    configs: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["status"] == "ok" and r["mode"] != "demo" and not r["remat"]:
            configs.setdefault((r["model"], r["batch"], r["dtype"]), {})[r["mode"]] = r
    peak = meta.get("peak_flops")
    derived = [
        r | NOT_DERIVED
        if r["mode"] == "demo"
        else derive(r, configs.get((r["model"], r["batch"], r["dtype"]), {}), peak, opts)
        for r in sorted(rows, key=sort_key(opts))
    ]
    meta = meta | {"peak_bf16_tflops": peak / 1e12 if peak else None}
    return finite({"meta": meta, "goals": goal_summary(derived, opts), "rows": derived})


# ----------------------------------------------------------------------------- writing it out
GOAL_LABELS = {
    "vs_torch_compile": "× torch.compile",
    "vs_torch_eager": "× torch eager",
    "mfu_pct": "bf16 MFU %",
}
MODE_LABELS = {
    "jit": "JAX jit",
    "jit_cudnn": "JAX jit (cuDNN attention)",
    "jit_xla": "JAX jit (xla attention)",
    "compile": "torch.compile",
    "eager": "torch eager",
    "channels_last": "torch eager (channels-last)",
    "demo": "JAX, demo end to end",
}


def num(value: float | None, spec: str, suffix: str = "") -> str:
    """A table cell: the formatted number, or — when there is none."""
    return "—" if value is None else f"{value:{spec}}{suffix}"


def note_cell(r: dict) -> str:
    """Status and note, short: nothing for a plain measured row."""
    note = r.get("note") or ""
    if r["status"] != "ok":
        note = f"{r['status']}: {note}" if note else r["status"]
    elif r["mode"] == "jit":
        note = "memory: XLA compiled estimate" if "compiled" in (r["memory_source"] or "") else ""
    elif r["mode"] != "demo":
        note = ""
    return note.replace("|", "/").replace("\n", " ")


COLUMNS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("model", lambda r: r["label"]),
    ("batch", lambda r: num(r["batch"], "d")),
    ("dtype", lambda r: r["dtype"]),
    ("remat", lambda r: "yes" if r["remat"] else "no"),
    ("framework/mode", lambda r: MODE_LABELS[r["mode"]]),
    ("step ms", lambda r: num(r.get("step_ms"), ".1f")),
    ("images/s", lambda r: num(r.get("images_per_s"), ",.0f")),
    ("MFU %", lambda r: num(r.get("mfu_pct"), ".1f")),
    ("peak GiB", lambda r: num(r.get("peak_memory_gib"), ".3g")),
    ("kept MiB/img", lambda r: num(r.get("kept_mib_per_image"), ".1f")),
    ("× torch.compile", lambda r: num(r.get("vs_torch_compile"), ".2f", "×")),
    ("× torch eager", lambda r: num(r.get("vs_torch_eager"), ".2f", "×")),
    ("≥ 1.0× compile", lambda r: r["goal_vs_compile"]),
    ("≥ 1.2× eager", lambda r: r["goal_vs_eager"]),
    ("MFU goal (bf16)", lambda r: r["goal_mfu"]),
    ("status / note", note_cell),
)


def markdown(report: dict) -> str:
    """The report as markdown: what was run on what, the goals' verdicts, ONE table."""
    meta, rows = report["meta"], report["rows"]
    device = meta.get("device") or {}
    torch = device.get("torch") or {}
    peak = meta.get("peak_bf16_tflops")
    lines = [
        "# GPU benchmark: JAX against PyTorch, same GPU, same step",
        "",
        f"`{meta['command']}` on {device.get('device_kind', '?')} "
        f"({device.get('platform', '?')}), {meta['date']}; jax {device.get('jax_version', '?')}, "
        f"torch {torch.get('version', '—')} (CUDA {torch.get('cuda') or '—'}). "
        f"{meta['elapsed_s']:.0f} s (budget {meta['options']['budget_s']:.0f} s). "
        f"Measured bf16 matmul peak: {num(peak, '.1f')} TFLOP/s "
        f"({meta['options']['peak_size']}², jitted).",
        "",
        *[f"- {n}" for n in meta["notes"]],
        "",
        f"Goals: {meta['goals']}.",
        "",
    ]
    for g in report["goals"]:
        values = ", ".join(f"{k}: {v:.2f}" for k, v in g["measured"].items() if v is not None)
        lines.append(
            f"- {g['model']}, {GOAL_LABELS[g['goal']]} ≥ {g['target']:.1f}: **{g['status']}**"
            + (f" ({values})" if values else "")
        )
    lines += ["", "| " + " | ".join(name for name, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(str(cell(r)) for _, cell in COLUMNS) + " |" for r in rows]
    return "\n".join(lines + top_ops_lines(rows)) + "\n"


def top_ops_lines(rows: list[dict]) -> list[str]:
    """Where each measured JAX step's time goes: its top XLA op kinds, ms per step."""
    lines = []
    for r in rows:
        if r.get("top_ops_ms"):
            ops = ", ".join(
                f"`{k}` {v:.2f}" if isinstance(v, float) else f"{k}: {v}"
                for k, v in r["top_ops_ms"].items()
            )
            lines.append(
                f"- {r['label']}, batch {r['batch']}, {r['dtype']}"
                f"{', remat' if r['remat'] else ''}, {MODE_LABELS[r['mode']]}: {ops}"
            )
    return ["", "XLA ops of each JAX step (ms per step, largest first):", *lines] if lines else []


def write_outputs(report: dict, opts: Options) -> tuple[pathlib.Path, pathlib.Path]:
    """OUT_DIR/NAME.json and OUT_DIR/NAME.md, replaced whole (a stopped run leaves both)."""
    out_dir = pathlib.Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"{opts.stem}.json", out_dir / f"{opts.stem}.md"
    texts = json.dumps(report, indent=2, allow_nan=False) + "\n", markdown(report)
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths


def notes(opts: Options) -> list[str]:
    """How the numbers were taken, printed above the table."""
    out = [
        f"{opts.image_size} px, {opts.steps} timed steps after warm-up, one device; the demo "
        "config's step (SGD momentum, frozen BatchNorm, dropout 0.9 on the penultimate "
        "features). JAX steps are timed one blocking call at a time, torch steps back to back.",
        "MFU: model FLOPs (2 x the multiply-adds of the JAX step's matmuls and convolutions, "
        "counted in its jaxpr, backward included: the same on every backend, where XLA's "
        "GPU count leaves out cuDNN/cuBLAS calls; remat rows use the plain step's, without "
        "the recomputation; torch rows the same count) x images/s / batch / the measured "
        "bf16 matmul peak. fp32: TF32 matmuls on both sides.",
        "Peak memory: JAX `memory_stats()['peak_bytes_in_use']` of its own process (on a CPU: "
        "state + batch + resident-memory growth in a step), torch `max_memory_allocated`.",
        "× torch eager: against the faster of NCHW and channels-last. torch on a GPU: "
        "cudnn.benchmark on (autotuned convolutions, as XLA's), TF32 for fp32 matmuls.",
    ]
    if opts.tiny:
        out.append("--tiny: toy shapes; the numbers show that the path runs, not speed.")
    return out


# ----------------------------------------------------------------------------- running it all
# The train steps import no TensorFlow (data/pixels.py); the demo reads its data with tf.data.
REQUIRED = ("jax", "flax", "optax", "ml_collections", "clu")
DEMO_REQUIRED = ("tensorflow", "tensorflow_datasets")


def missing_packages(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """Which of `names` (default: what the train steps need) this Python lacks."""
    return [m for m in names if importlib.util.find_spec(m) is None]


def run_all(opts: Options, command: str) -> dict:
    """Every part of the plan within the budget; both outputs rewritten after each part."""
    start = time.monotonic()
    deadline = start + opts.budget_s if opts.budget_s > 0 else start + 24 * 3600
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"command": command, "date": now, "options": dataclasses.asdict(opts)}
    meta |= {"goals": GOALS_TEXT, "notes": notes(opts), "elapsed_s": 0.0}
    rows: list[dict] = []
    for part in plan(opts):
        left, before = deadline - time.monotonic(), len(rows)
        if part == "demo":
            rows.append(run_demo(opts.demo, min(opts.demo_timeout_s, left)))
        else:
            rows += run_part(opts, part, meta, left)
        meta["elapsed_s"] = time.monotonic() - start
        report = finalize(rows, meta, opts)
        json_path, _ = write_outputs(report, opts)
        done = sum(r["status"] == "ok" for r in rows)
        took = seconds_taken(rows[before:])
        print(
            f"[{meta['elapsed_s']:4.0f} s] {describe(opts, part)}: {done}/{len(rows)} rows ok{took}"
        )
    print(markdown(report))
    print(f"Wrote {json_path} and {json_path.with_suffix('.md')}")
    return report


def seconds_taken(rows: list[dict]) -> str:
    """Where a part's time went, e.g. ` (JAX jit 9 s setup + 31 s, torch.compile 58 s)`."""
    parts = [
        f"{MODE_LABELS.get(r['mode'], r['mode'])} "
        + (f"{r['setup_s']:.0f} s setup + " if r.get("setup_s") is not None else "")
        + f"{r['wall_s']:.0f} s"
        for r in rows
        if r.get("wall_s") is not None and r["mode"] != "demo"
    ]
    return f" ({', '.join(parts)})" if parts else ""


def dry_run(opts: Options) -> str:
    """The plan, in words: what would run, in which order, where the outputs go."""
    budget = f"{opts.budget_s:.0f} s" if opts.budget_s > 0 else "none"
    lines = [f"Plan, in priority order (budget {budget}; a group needs {MIN_GROUP_S} s left):"]
    for i, part in enumerate(plan(opts), 1):
        if part == "demo":
            cmd = " ".join(demo_command(opts.demo, "TMPDIR")[1:])
            what = "skipped (--demo=none)" if opts.demo == "none" else f"python {cmd}"
            lines.append(f"{i:2d}. demo: {what} (timeout {opts.demo_timeout_s:.0f} s)")
            continue
        label = ", ".join(
            MODE_LABELS[m]
            + (" (not run)" if m == "compile" and part.dtype not in opts.compile_dtypes else "")
            for _, m in modes(opts, part)
        )
        where = "own process" if opts.isolate else "this process"
        lines.append(f"{i:2d}. {describe(opts, part)}: {label} [{where}]")
    rows = sum(len(expected_rows(opts, g)) for g in plan(opts) if g != "demo") + 1
    stem = pathlib.Path(opts.out_dir) / opts.stem
    lines += [f"{rows} rows -> {stem}.json and {stem}.md", f"Goals: {GOALS_TEXT}."]
    lines.append(f"Missing packages: {', '.join(missing_packages()) or 'none'}")
    if demo_missing := missing_packages(DEMO_REQUIRED):
        lines.append(f"The demo will be skipped: this Python lacks {', '.join(demo_missing)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
# name: (full-size default, --tiny default) of the flags --tiny changes.
SIZES = {
    "batch": ("96,256", "4"),
    "steps": (10, 2),
    "image_size": (224, 32),
    "peak_size": (8192, 512),
    "torch_compile_dtypes": ("bfloat16", ""),
    "name": ("gpu_benchmark", "gpu_benchmark_tiny"),
    "vit_attention": ("cudnn", "xla"),
}


def define_flags(flag_values: Any = None) -> None:
    """The benchmark's flags, defined when it starts (tests parse into their own FlagValues)."""
    from absl import flags  # noqa: PLC0415

    fv = {"flag_values": flags.FLAGS if flag_values is None else flag_values}
    sized = lambda n: f" Default {SIZES[n][0]!r}, --tiny {SIZES[n][1]!r}."  # noqa: E731
    flags.DEFINE_boolean("tiny", False, "Toy shapes on any device (CPU): the same path.", **fv)
    flags.DEFINE_list("model", list(MODELS), "Backbones: resnet50, vit_b16.", **fv)
    flags.DEFINE_string("batch", None, "Comma-separated batch sizes." + sized("batch"), **fv)
    flags.DEFINE_list("dtype", ["bfloat16", "float32"], "Compute dtypes.", **fv)
    flags.DEFINE_list("remat_dtypes", ["bfloat16"], "Dtypes with a remat row (ViT).", **fv)
    flags.DEFINE_string(
        "vit_attention",
        None,
        "ViT bf16 rows also with these jax.nn.dot_product_attention implementations (xla, "
        "cudnn; empty: none)." + sized("vit_attention"),
        **fv,
    )
    flags.DEFINE_string(
        "torch_compile_dtypes",
        None,
        "Dtypes timed with torch.compile." + sized("torch_compile_dtypes"),
        **fv,
    )
    flags.DEFINE_integer("steps", None, "Timed steps." + sized("steps"), lower_bound=1, **fv)
    flags.DEFINE_integer("image_size", None, "Pixels." + sized("image_size"), **fv)
    flags.DEFINE_integer("peak_size", None, "Peak matmul size." + sized("peak_size"), **fv)
    flags.DEFINE_float("budget_s", 285, "Seconds for everything; 0: no limit.", **fv)
    flags.DEFINE_enum("demo", "tiny", ["tiny", "full", "none"], "The demo end to end.", **fv)
    flags.DEFINE_float("demo_timeout_s", 150, "Time limit of the demo.", **fv)
    flags.DEFINE_boolean("isolate", None, "A process per group (default: on unless --tiny).", **fv)
    flags.DEFINE_boolean("allow_cpu", False, "Full shapes without a GPU (slow).", **fv)
    flags.DEFINE_string("out_dir", "docs/benchmarks", "Where NAME.json and NAME.md go.", **fv)
    flags.DEFINE_string("name", None, "File name stem." + sized("name"), **fv)
    flags.DEFINE_boolean("dry_run", False, "Print the plan and exit.", **fv)
    flags.DEFINE_string("child", None, "Internal: a group's spec (JSON), run here.", **fv)
    flags.DEFINE_string("child_out", None, "Internal: the child's JSON-lines output.", **fv)


def resolve(f: Any) -> Options:
    """Options from parsed flags: --tiny's defaults where a flag was not given; checked."""
    from absl import app  # noqa: PLC0415

    def pick(name: str) -> Any:
        return f[name].value if f[name].value is not None else SIZES[name][int(f.tiny)]

    def names(value: str | list[str]) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(x.strip() for x in items if x.strip())

    unknown = [m for m in f.model if m not in MODELS]
    bad = [d for d in (*f.dtype, *f.remat_dtypes) if d not in ("bfloat16", "float32")]
    if unknown or bad:
        raise app.UsageError(f"--model {unknown} not in {list(MODELS)}, or dtypes {bad}.")
    attention = names(pick("vit_attention"))
    if bad_attention := [a for a in attention if f"jit_{a}" not in MODES]:
        raise app.UsageError(f"--vit_attention {bad_attention}: xla and cudnn are known.")
    try:
        batches = tuple(int(b) for b in names(pick("batch")))
    except ValueError as e:
        raise app.UsageError(f"--batch: {e}") from e
    return Options(
        tiny=f.tiny,
        models=tuple(f.model),
        batches=batches,
        dtypes=tuple(f.dtype),
        remat_dtypes=tuple(f.remat_dtypes),
        compile_dtypes=names(pick("torch_compile_dtypes")),
        steps=pick("steps"),
        image_size=pick("image_size"),
        peak_size=pick("peak_size"),
        budget_s=f.budget_s,
        demo=f.demo,
        demo_timeout_s=f.demo_timeout_s,
        isolate=f.isolate if f.isolate is not None else not f.tiny,
        allow_cpu=f.allow_cpu,
        out_dir=f.out_dir,
        stem=pick("name"),
        attention=attention,
    )


def main(argv: list[str]) -> None:
    """The child of a run, the plan (--dry_run), or the whole run."""
    from absl import app, flags  # noqa: PLC0415

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from richft_jax import xla_cpu  # noqa: PLC0415 (jaxlib's version only, no backend)

    xla_cpu.tune()
    f = flags.FLAGS
    if f.child:
        return child(f.child, f.child_out)
    opts = resolve(f)
    if f.dry_run:
        return print(dry_run(opts))
    if missing_packages():
        sys.exit(f"gpu.py: missing Python packages {missing_packages()} (pip install -e .).")
    try:
        run_all(opts, "bash benchmarks/gpu.sh " + " ".join(sys.argv[1:]))
    except NoAccelerator as e:
        sys.exit(f"gpu.py: {e}")


def run() -> None:
    """`python -m benchmarks.gpu`: --help prints the doc and the flags and exits 0."""
    from absl import app  # noqa: PLC0415

    define_flags()
    if {"-h", "--help", "--helpshort", "-?"} & set(sys.argv[1:]):
        app.usage(shorthelp=True, writeto_stdout=True)
        return
    app.run(main)


if __name__ == "__main__":
    run()
