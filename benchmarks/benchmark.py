"""Throughput benchmark of the train step and evaluation paths: prints a table, writes JSON.

  python -m richft_jax.benchmark [--model=small_resnet,small_vit] [--batch=128] [--steps=30]
      [--image_size=32] [--dtype=float32|bfloat16] [--remat] [--devices=N] [--torch|--no-torch]
      [--k=4] [--compile_only] [--out=benchmark.json]

Numbers, not assertions: train-step images/s and model FLOP utilisation against the measured
peak of this device (a large jitted matmul timed in the same process), peak memory of the
step, feature-dropout overhead (rate 0.9 vs 0), input-pipeline images/s against the step, the
cost of a K-model vmapped ensemble evaluation against K single evaluations, and of a
Taylor-model evaluation (one jvp) against a forward pass. With torch installed, the same step
in PyTorch (benchmark_torch.py: eager, channels-last, torch.compile) timed in the same run,
and the ratios JAX / PyTorch.
"""

import argparse
import collections
import ctypes
import importlib.util
import json
import pathlib
import re
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from richft_jax import config_lib, parallel, train, xla_cpu
from richft_jax.analysis import linearization
from richft_jax.data import pipeline
from richft_jax.methods import weight_space as ws
from richft_jax.models import registry

DEMO_MODELS = ("small_resnet", "small_vit")


def timeit(fn, n: int) -> float:
    """Seconds per call of fn() (which must block), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def matmul_peak(size: int = 2048, n: int = 10) -> float:
    """Measured FLOP/s of a jitted fp32 matmul: the practical peak of this device."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * size**3 / timeit(lambda: f(a).block_until_ready(), n)


def compiled_costs(jitted, *args) -> dict:
    """FLOPs (XLA's cost analysis; 0 if unreported) and memory analysis of one compiled call.

    Peak bytes = arguments + outputs + temporaries - outputs aliased to donated arguments.
    """
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out = {"flops": float((cost or {}).get("flops", 0.0)), "peak_bytes": None}
    mem = compiled.memory_analysis()
    if mem is not None:
        out["peak_bytes"] = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    return out


def _status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_rss_growth(fn: Callable[[], object]) -> int | None:
    """How far the process's resident memory rises above its level before `fn()` at peak.

    Host-memory peaks the same way for any framework (Linux only, else None): freed heap pages
    go back to the OS first (malloc_trim), the high-water mark is reset (clear_refs 5), and
    VmHWM after the call minus VmRSS before it is what the call needed on top of what was
    already resident (its persistent state).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _status_bytes("VmRSS")
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except (OSError, KeyError, AttributeError):
        return None
    fn()
    return max(0, _status_bytes("VmHWM") - before)


def profile_ops(fn: Callable[[], object], steps: int) -> list[tuple[str, float]]:
    """Where a jitted step's time goes: XLA op kinds (HLO names without their numeric suffix)
    and their milliseconds per step, summed over the executor threads, largest first.

    A jax.profiler trace of `steps` calls, read back from its XPlane file (the protobuf
    TensorFlow ships); thread-pool bookkeeping events (ThunkExecutor) are left out.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415 (TF is a dep)

    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            for _ in range(steps):
                fn()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(pathlib.Path(logdir).rglob("*.xplane.pb")).read_bytes())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name.startswith(("ThunkExecutor", "$")):
                    continue
                totals[re.sub(r"(\.\d+)+$", "", name)] += event.duration_ps / 1e9 / steps
    return totals.most_common()


def tree_bytes(tree) -> int:
    """Bytes held by the arrays of a pytree."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def device_peak_bytes() -> int | None:
    """The allocator's peak bytes in use on device 0, where the backend reports it (GPU/TPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def benchmark_config(
    model_name: str, dtype: str, remat: bool = False
) -> "config_lib.ml_collections.ConfigDict":
    """The demo config with the benchmarked backbone (the demo's kwargs for small_resnet);
    `remat` recomputes each block of a published-layout ViT in the backward pass."""
    config = config_lib.load_config_file("configs/demo.py")
    config.model.name = model_name
    config.model.dtype = dtype
    if model_name != "small_resnet":
        config.model.kwargs = {}
    if remat:
        if not model_name.startswith("vit_"):
            raise ValueError(f"--remat: only the published-layout ViTs have it, not {model_name}.")
        config.model.kwargs = {"remat": True}
    return config


def run(
    model_name: str,
    batch: int,
    steps: int,
    k: int,
    data_dir: str | None = None,
    *,
    image_size: int | None = None,
    dtype: str = "float32",
    devices: int | None = None,
    torch: bool = False,
    torch_compile: bool = True,
    profile: int = 0,
    remat: bool = False,
    compile_only: bool = False,
) -> dict:
    """All measurements for one backbone (and its PyTorch twin when `torch`); with `profile`,
    the top XLA op kinds of the train step (profile_ops) under "profile_ms_per_step"."""
    image_size = image_size or (32 if model_name in DEMO_MODELS else 224)
    config = benchmark_config(model_name, dtype, remat)
    mesh = parallel.make_mesh(jax.devices()[:devices] if devices else None)
    model = registry.build_classifier(config.model, 10)
    tx = train.make_optimizer(config.optim, 1000)
    shape = (1, image_size, image_size, 3)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.device_put(
        train.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(variables["params"]),
            rng=jax.random.PRNGKey(0),
            avg_params={},
        ),
        rep,
    )
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, batch).astype(np.int32),
    }
    dev_batch = parallel.global_batch(host_batch, mesh)
    step = jax.jit(
        train.make_train_step(model, tx, train.make_schedule(config.optim, 1000), "minus_one_one"),
        in_shardings=(rep, shard, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    out = {
        "model": model_name,
        "batch": batch,
        "image_size": image_size,
        "dtype": dtype,
        "remat": remat,
        "devices": mesh.devices.size,
        "platform": jax.devices()[0].platform,
    }
    if compile_only:  # XLA's FLOPs and memory of the compiled step, nothing run.
        costs = compiled_costs(step, state, dev_batch, jnp.float32(0.9))
        out["train_step_gflops"] = costs["flops"] / 1e9
        if costs["peak_bytes"] is not None:
            out["jax_compiled_memory_mb"] = costs["peak_bytes"] / 2**20
        return out
    holder = {"state": state}  # The step donates its state: always pass the newest one.

    def one(rate: float) -> None:
        holder["state"], m = step(holder["state"], dev_batch, jnp.float32(rate))
        jax.block_until_ready(m)

    for rate in (0.0, 0.9):
        out[f"train_images_per_s_dropout{rate}"] = batch / timeit(lambda r=rate: one(r), steps)
    if profile:
        ops = profile_ops(lambda: one(0.9), steps)
        out["profile_ms_per_step"] = {k: round(v, 2) for k, v in ops[:profile]}
        out["profile_total_ms_per_step"] = round(sum(v for _, v in ops), 2)
    state = holder["state"]
    costs = compiled_costs(step, state, dev_batch, jnp.float32(0.9))
    flops = costs["flops"]
    peak = matmul_peak()
    out["train_step_gflops"] = flops / 1e9
    out["peak_gflops_per_s"] = peak / 1e9
    out["mfu"] = flops * out["train_images_per_s_dropout0.9"] / batch / peak
    out["dropout_overhead"] = (
        out["train_images_per_s_dropout0.0"] / out["train_images_per_s_dropout0.9"] - 1.0
    )
    measured = device_peak_bytes()
    growth = None if measured is not None else peak_rss_growth(lambda: one(0.9))
    if measured is not None:
        peak_bytes, source = measured, "device memory_stats peak_bytes_in_use"
    elif growth is not None:
        peak_bytes = tree_bytes((holder["state"], dev_batch)) + growth
        source = "state + batch + peak RSS growth during a step"
    else:
        peak_bytes = costs["peak_bytes"]
        source = "compiled.memory_analysis (args + outputs + temps - aliased)"
    out["jax_peak_memory_mb"] = None if peak_bytes is None else peak_bytes / 2**20
    out["jax_memory_source"] = source
    if costs["peak_bytes"] is not None:
        out["jax_compiled_memory_mb"] = costs["peak_bytes"] / 2**20
    if torch:
        out.update(torch_side(config, host_batch, steps, dtype, torch_compile))
        jax_rate = out["train_images_per_s_dropout0.9"]
        for variant in ("eager", "channels_last", "compile"):
            torch_rate = out.get(f"torch_{variant}_images_per_s")
            if f"torch_{variant}_images_per_s" in out:
                out[f"jax_over_torch_{variant}"] = jax_rate / torch_rate if torch_rate else None

    # Input pipeline: the demo's real tf.data path on the embedded data.
    data = pipeline.load_domains("digits_domains", "syn", 0, data_dir=data_dir)
    per_domain = batch // len(data.train_domains)
    it = pipeline.train_dataset(
        data,
        seed=0,
        batch_size_per_domain=per_domain,
        start_step=0,
        num_steps=10**6,
        augment="crop",
    ).as_numpy_iterator()
    out["input_images_per_s"] = per_domain * len(data.train_domains) / timeit(lambda: next(it), 50)
    out["input_over_step"] = out["input_images_per_s"] / out["train_images_per_s_dropout0.9"]

    # Ensemble of K models (stacked + vmapped) against K single evaluations.
    logits = train.model_logits(model)
    # Fresh variables: the train state built from the first ones was donated to the step.
    variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
    single = jax.jit(lambda v, x: logits(v, x))
    members = [
        {
            "params": jax.tree.map(lambda p, i=i: p + 0.01 * i, variables["params"]),
            "batch_stats": variables.get("batch_stats", {}),
        }
        for i in range(k)
    ]
    stacked = ws.stack(members)
    images = jnp.asarray(host_batch["image"], jnp.float32) / 127.5 - 1
    t_single = timeit(lambda: [single(m, images).block_until_ready() for m in members], 5)
    for key, per_pass in (("", None), ("_one_per_pass", 1)):
        ensemble = jax.jit(
            lambda v, x, n=per_pass: ws.ensemble_logits(logits, v, x, "sum_logits", n)
        )
        t_ens = timeit(lambda e=ensemble: e(stacked, images).block_until_ready(), 5)
        out[f"ensemble{k}_over_{k}_singles{key}"] = t_ens / t_single

    # Taylor model (one jvp around the pretrained weights) against a plain forward pass.
    bs = variables.get("batch_stats", {})
    forward = jax.jit(lambda p, x: logits({"params": p, "batch_stats": bs}, x))
    taylor = jax.jit(
        lambda p0, p, x: linearization.taylor_model(
            lambda q, y: logits({"params": q, "batch_stats": bs}, y), p0, p, x
        )
    )
    p0, p1 = members[0]["params"], members[-1]["params"]
    t_forward = timeit(lambda: forward(p1, images).block_until_ready(), 5)
    t_taylor = timeit(lambda: taylor(p0, p1, images).block_until_ready(), 5)
    out["taylor_over_forward"] = t_taylor / t_forward
    return out


def torch_side(config, host_batch: dict, steps: int, dtype: str, compile_: bool) -> dict:
    """The same step in PyTorch on the same batch (benchmark_torch.benchmark)."""
    from richft_jax import benchmark_torch  # noqa: PLC0415 (optional dependency)

    optim = {
        "lr": config.optim.lr,
        "momentum": config.optim.momentum,
        "weight_decay": config.optim.weight_decay,
        "head_lr_factor": config.optim.head_lr_factor,
    }
    return benchmark_torch.benchmark(
        config.model.name,
        dict(config.model.kwargs),
        host_batch["image"],
        host_batch["label"],
        optim=optim,
        dropout_rate=0.9,
        freeze_bn=config.model.freeze_bn,
        steps=steps,
        dtype=dtype,
        compile_=compile_,
    )


def format_table(rows: list[dict]) -> str:
    """One markdown table: a line per measurement, a column per backbone; then each backbone's
    profile (op kind: ms per step), when one was taken."""
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], dict)))
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| | " + " | ".join(str(r["model"]) for r in rows) + " |"]
    lines.append("|---|" + "---|" * len(rows))
    lines += [f"| {k} | " + " | ".join(cell(r.get(k)) for r in rows) + " |" for k in keys]
    for r in rows:
        if "profile_ms_per_step" in r:
            total = r["profile_total_ms_per_step"]
            lines.append(
                f"\n{r['model']}: XLA op time per train step ({total:.1f} ms, all threads)"
            )
            lines += [
                f"  {ms:9.2f} ms {100 * ms / total:5.1f} %  {kind}"
                for kind, ms in r["profile_ms_per_step"].items()
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    xla_cpu.tune()  # No effect once a backend exists (e.g. called from tests).
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_resnet", help="Comma-separated backbones.")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--image_size", type=int, default=None, help="Default: 32 (demo backbones), else 224."
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="Compute dtype (config.model.dtype; parameters stay float32).",
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="Rematerialise the ViT blocks (config.model.kwargs.remat; vit_* only).",
    )
    parser.add_argument(
        "--compile_only",
        action="store_true",
        help="Only compile the train step: its GFLOP and compiled memory (no timing).",
    )
    parser.add_argument("--devices", type=int, default=None, help="Use the first N devices.")
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=importlib.util.find_spec("torch") is not None,
        help="Also time the PyTorch step (default: on when torch is importable).",
    )
    parser.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--k", type=int, default=4, help="Ensemble size.")
    parser.add_argument(
        "--profile", type=int, default=0, help="Print the N op kinds the train step spends most on."
    )
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's).")
    args = parser.parse_args(argv)
    if args.devices is not None and not 0 < args.devices <= jax.device_count():
        parser.error(f"--devices={args.devices}: this process has {jax.device_count()} devices.")
    if args.batch % (args.devices or jax.device_count()):
        parser.error(f"--batch={args.batch} must be a multiple of the device count.")
    rows = [
        run(
            m,
            args.batch,
            args.steps,
            args.k,
            args.data_dir,
            image_size=args.image_size,
            dtype=args.dtype,
            devices=args.devices,
            torch=args.torch,
            torch_compile=args.torch_compile,
            profile=args.profile,
            remat=args.remat,
            compile_only=args.compile_only,
        )
        for m in args.model.split(",")
    ]
    print(format_table(rows))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
