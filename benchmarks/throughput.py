"""Throughput measurements of the train step and evaluation paths, for `benchmarks.benchmark`
(the command: its flags, table and JSON) and `benchmarks.gpu`.

Numbers, not assertions: train-step images/s and model FLOP utilisation against the measured
peak of this device (a large jitted matmul timed in the same process), peak memory of the
step, feature-dropout overhead (rate 0.9 vs 0), input-pipeline images/s against the step, the
cost of a K-model vmapped ensemble evaluation against K single evaluations, and of a
Taylor-model evaluation (one jvp) against a forward pass, evaluation images/s (the eval step
every evaluation round runs). With torch installed, the same step in PyTorch (torch_twins.py:
eager, channels-last, torch.compile) and its evaluation forward timed in the same run.
"""

import collections
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import pathlib
import re
import subprocess
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.measure import peak_rss_growth, timeit
from richft_jax import config_checks, config_lib, parallel, steps
from richft_jax.data import pixels
from richft_jax.methods import weight_space as ws
from richft_jax.models import registry

DEMO_MODELS = ("small_resnet", "small_vit")
NUM_CLASSES = 10
TORCH_VARIANTS = ("eager", "channels_last", "compile")


# ----------------------------------------------------------------------------- XLA measurements
def matmul_peak(size: int = 2048, n: int = 10, dtype: Any = jnp.float32, rounds: int = 5) -> float:
    """Measured FLOP/s of a jitted matmul (fp32 by default): the practical peak of this device,
    the fastest of `rounds` rounds of `n` (one round swung 343-521 GFLOP/s on the 2-core VM)."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    return max(2 * size**3 / timeit(lambda: f(a).block_until_ready(), n) for _ in range(rounds))


def compiled_costs(jitted, *args) -> dict:
    """FLOPs (XLA's cost analysis; 0 if unreported) and memory analysis of one compiled call.

    Peak bytes = arguments + outputs + temporaries - outputs aliased to donated arguments.
    `lowered_flops`: the same count on the HLO before XLA's passes, the same on every backend
    (a backend's compiled count can leave out library calls, e.g. cuDNN convolutions).
    """
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out = {"flops": float((cost or {}).get("flops", 0.0)), "peak_bytes": None}
    out["lowered_flops"] = float((lowered.cost_analysis() or {}).get("flops", 0.0))
    mem = compiled.memory_analysis()
    if mem is not None:
        out["peak_bytes"] = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    return out


def model_flops(fn: Callable, *args) -> float:
    """FLOPs of one call of `fn`: 2 x the multiply-adds of every matmul and convolution in its
    jaxpr (forward and backward; scan bodies times their length, the costliest branch of a
    cond). Unlike XLA's cost analysis, the same on every backend: a GPU's count leaves out
    the cuDNN / cuBLAS calls its convolutions and matmuls become."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr: Any) -> float:
    """model_flops of one (open) jaxpr."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name, out = eqn.primitive.name, eqn.outvars[0].aval
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            total += 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs, spec = eqn.invars[1].aval, eqn.params["dimension_numbers"].rhs_spec
            per_output = math.prod(rhs.shape[d] for d in spec[1:])  # in-features x window
            holes = math.prod(eqn.params["lhs_dilation"])  # A strided conv's input gradient.
            groups = eqn.params["batch_group_count"]
            total += 2.0 * math.prod(out.shape) * per_output / holes / groups
        subs = [_jaxpr_flops(j) for j in _subjaxprs(eqn.params)]
        if name == "cond":
            total += max(subs, default=0.0)
        else:
            total += sum(subs) * (eqn.params.get("length", 1) if name == "scan" else 1)
    return total


def _subjaxprs(params: dict) -> list:
    """The jaxprs among an equation's parameters (pjit, remat, custom_vjp, scan, cond)."""
    found = []
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jax.extend.core.Jaxpr):
                found.append(v)
    return found


def profile_ops(fn: Callable[[], object], steps: int) -> list[tuple[str, float]]:
    """Where a jitted step's time goes: XLA op kinds (HLO names without their numeric suffix)
    and their milliseconds per step, largest first.

    A jax.profiler trace of `steps` calls, read back with jax.profiler.ProfileData (no
    TensorFlow: the GPU image has none). On a GPU or TPU, the devices' "XLA Ops" lines; on a
    CPU, the executor threads summed (thread-pool bookkeeping left out).
    """
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            for _ in range(steps):
                fn()
        trace = next(pathlib.Path(logdir).rglob("*.xplane.pb"))
        planes = list(jax.profiler.ProfileData.from_file(str(trace)).planes)
    devices = [p for p in planes if p.name.startswith("/device:")]
    if devices:
        lines = [line for p in devices for line in p.lines if line.name == "XLA Ops"]
    else:
        lines = [line for p in planes for line in p.lines if line.name != "python"]
    totals: collections.Counter = collections.Counter()
    for line in lines:
        for event in line.events:
            if event.name.startswith(("ThunkExecutor", "ThreadpoolListener", "$")):
                continue
            totals[re.sub(r"(\.\d+)+$", "", event.name)] += event.duration_ns / 1e6 / steps
    return totals.most_common()


def tree_bytes(tree) -> int:
    """Bytes held by the arrays of a pytree."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def device_peak_bytes() -> int | None:
    """The allocator's peak bytes in use on device 0, where the backend reports it (GPU/TPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


# ----------------------------------------------------------------------------- the benchmarked step
def module_at(rev: str, name: str) -> types.ModuleType:
    """The repository's module `name` (package.module) as its source at git revision `rev`
    defines it (`git show`), loaded as "name@rev" beside this tree's: one side of an A/B."""
    path = name.replace(".", "/") + ".py"
    repo = pathlib.Path(__file__).resolve().parents[1]
    shown = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True, check=False
    )
    if shown.returncode:
        raise ValueError(f"--a_rev={rev}: git cannot show {path}: {shown.stderr.strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        file = pathlib.Path(tmp) / pathlib.Path(path).name
        file.write_text(shown.stdout, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"{name}@{rev}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def backbone_at(rev: str, name: str) -> type:
    """The registry's backbone `name` as its module's source at git revision `rev` defines it
    (`git show`, loaded under another name; a published-layout variant keeps its presets): one
    side of an in-process A/B of a model change (model_ab --a_rev)."""
    cls = registry.BACKBONES[name]
    base = next(c for c in cls.__mro__ if c.__module__ != registry.__name__)
    old = getattr(module_at(rev, base.__module__), base.__name__)
    if cls is base:
        return old
    return registry.variant(name, old, {k: getattr(cls, k) for k in cls.__annotations__})


@contextlib.contextmanager
def module_constants(settings: dict):
    """Sets module attributes {"package.module.NAME": value} for the block, then restores them;
    a name the module lacks is refused (a typo would silently A/B nothing)."""
    saved = []
    try:
        for path, value in settings.items():
            module_name, _, name = path.rpartition(".")
            try:
                module = importlib.import_module(module_name)
            except (ImportError, ValueError):  # No such module, or an empty name.
                module = None
            if module is None or not hasattr(module, name):
                raise ValueError(
                    f"--a_set: {path!r} names no module constant (package.module.NAME)."
                )
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def benchmark_config(model_name: str, dtype: str, remat: bool = False) -> ml_collections.ConfigDict:
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


@dataclasses.dataclass
class Bench:
    """One backbone's setup: the library's model, optimizer and jitted train step over the
    mesh, one fixed random batch, θ0 on the host, and the newest (donated) train state."""

    config: ml_collections.ConfigDict
    model: Any
    mesh: jax.sharding.Mesh
    step: Callable  # jitted (state, batch, rate, lr) -> (state, metrics); donates the state.
    host_batch: dict
    dev_batch: dict
    variables: dict  # θ0 as numpy: never donated, so every measurement can start from it.
    state: steps.TrainState

    def run_step(self, rate: float) -> None:
        """One blocking train step at feature-dropout `rate`, from the newest state."""
        self.state, m = self.step(self.state, self.dev_batch, jnp.float32(rate), self.lr)
        jax.block_until_ready(m)

    @property
    def lr(self) -> jax.Array:
        """The learning rate of every benchmarked step: the config's base rate."""
        return jnp.float32(self.config.optim.lr)


def setup(
    model_name: str,
    batch: int,
    image_size: int,
    dtype: str,
    remat: bool,
    devices: int | None,
    kwargs: dict | None = None,
) -> Bench:
    """The benchmark of one backbone, built by the library (run, steps) as a training run is;
    `kwargs` override config.model.kwargs (e.g. tiny sizes)."""
    config = benchmark_config(model_name, dtype, remat)
    if kwargs:
        config.model.kwargs = {**config.model.kwargs, **kwargs}
    mesh = parallel.make_mesh(jax.devices()[:devices] if devices else None)
    model = registry.build_classifier(config.model, NUM_CLASSES)
    tx = steps.make_optimizer(config.optim)
    init_key, root = steps.keys(config)
    shape = (1, image_size, image_size, 3)
    init = jax.jit(lambda key: model.init(key, jnp.zeros(shape), train=False))
    variables = jax.device_get(init(init_key))
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = steps.create_train_state(variables["params"], variables["batch_stats"], tx, root)
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
    }
    step = jax.jit(
        steps.make_train_step(model, tx, config.data.normalize),
        in_shardings=(rep, shard, rep, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    dev_batch = parallel.global_batch(host_batch, mesh)
    return Bench(
        config, model, mesh, step, host_batch, dev_batch, variables, jax.device_put(state, rep)
    )


def saved_activation_mb(bench: Bench, batches: tuple[int, int] = (1, 2)) -> float:
    """MiB per image that the train step's loss keeps for its backward pass: the residuals of
    `jax.vjp`, traced as under jit (nothing compiled or run), as a slope over two batch sizes so
    parameters and their casts cancel. Before XLA's fusion: what autodiff asks to keep, the
    platform-independent part of the step's memory traffic; torch_twins.saved_activation_mb
    counts the same for PyTorch."""
    loss = steps.make_loss(bench.model, bench.config.data.normalize)
    params, stats = bench.variables["params"], bench.variables["batch_stats"]
    size = bench.host_batch["image"].shape[1]

    def residuals(p, images, labels):
        batch, key = {"image": images, "label": labels}, jax.random.key(0)
        f = lambda q: loss(q, stats, batch, jnp.float32(0.9), key, 0)[0]  # noqa: E731
        return jax.tree.leaves(jax.vjp(f, p)[1])

    def kept_bytes(batch: int) -> int:
        images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
        labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
        return distinct_output_bytes(jax.make_jaxpr(residuals)(params, images, labels).jaxpr)

    small, large = batches
    return (kept_bytes(large) - kept_bytes(small)) / (large - small) / 2**20


def distinct_output_bytes(jaxpr: Any) -> int:
    """Bytes of a jaxpr's distinct output arrays, leaving out what XLA never stores: broadcasts
    of a scalar (ReLU's zeros) and reshapes of another output (views)."""
    made_by = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    outputs = {v for v in jaxpr.outvars if not hasattr(v, "val")}  # Literals have a value.

    def stored(v) -> bool:
        eqn = made_by.get(v)
        if eqn is None:
            return True
        source = eqn.invars[0] if eqn.invars else None
        if eqn.primitive.name == "broadcast_in_dim" and source is not None:
            return source.aval.size > 1
        return not (eqn.primitive.name == "reshape" and source in outputs)

    return sum(v.aval.size * v.aval.dtype.itemsize for v in outputs if stored(v))


def header(bench: Bench, remat: bool) -> dict:
    """What was benchmarked: backbone, batch, image size, dtype, devices, platform."""
    return {
        "model": bench.config.model.name,
        "batch": bench.host_batch["image"].shape[0],
        "image_size": bench.host_batch["image"].shape[1],
        "dtype": bench.config.model.dtype,
        "remat": remat,
        "devices": bench.mesh.devices.size,
        "platform": jax.devices()[0].platform,
    }


# ----------------------------------------------------------------------------- measurements
def compiled_step(bench: Bench) -> tuple[dict, dict]:
    """XLA's GFLOP and compiled memory of the train step, nothing run; and the raw costs."""
    costs = compiled_costs(bench.step, bench.state, bench.dev_batch, jnp.float32(0.9), bench.lr)
    out = {"train_step_gflops": costs["flops"] / 1e9}
    if costs["peak_bytes"] is not None:
        out["jax_compiled_memory_mb"] = costs["peak_bytes"] / 2**20
    return out, costs


def time_train_step(bench: Bench, num_steps: int) -> dict:
    """Train-step images/s at feature dropout 0 and 0.9, and the overhead of the dropout."""
    batch = bench.host_batch["image"].shape[0]
    out = {}
    for rate in (0.0, 0.9):
        seconds = timeit(lambda r=rate: bench.run_step(r), num_steps)
        out[f"train_images_per_s_dropout{rate}"] = batch / seconds
    out["dropout_overhead"] = (
        out["train_images_per_s_dropout0.0"] / out["train_images_per_s_dropout0.9"] - 1.0
    )
    return out


def time_eval(bench: Bench, num_steps: int) -> dict:
    """Evaluation images/s: the eval step every evaluation round runs (`steps.make_eval_step`:
    the forward pass in eval mode, loss and accuracy summed per split) on the benchmark's
    batch, with θ0's weights."""
    batch = bench.host_batch["image"].shape[0]
    step = jax.jit(
        steps.make_eval_step(steps.model_logits(bench.model), bench.config.data.normalize),
        out_shardings=parallel.replicated(bench.mesh),
    )
    host = {**bench.host_batch, "segment": np.ones((batch, 1), np.float32)}  # One split.
    eval_batch = parallel.global_batch(host, bench.mesh)
    variables = jax.device_put(bench.variables, parallel.replicated(bench.mesh))
    seconds = timeit(lambda: jax.block_until_ready(step(variables, eval_batch)), num_steps)
    return {"eval_images_per_s": batch / seconds}


def time_torch_eval(bench: Bench, num_steps: int, jax_eval_images_per_s: float) -> dict:
    """The torch twin's evaluation forward on the same batch (torch_twins.eval_benchmark), and
    JAX / PyTorch for each of its layouts."""
    from benchmarks import torch_twins  # noqa: PLC0415 (optional dependency)

    config = bench.config
    out = torch_twins.eval_benchmark(
        config.model.name,
        config_checks.architecture_kwargs(config.model.kwargs),
        bench.host_batch["image"],
        steps=num_steps,
        dtype=config.model.dtype,
        freeze_bn=config.model.freeze_bn,
    )
    for key, rate in list(out.items()):
        variant = key.removeprefix("torch_eval_").removesuffix("_images_per_s")
        out[f"jax_eval_over_torch_eval_{variant}"] = jax_eval_images_per_s / rate
    return out


def profile_step(bench: Bench, num_steps: int, top: int) -> dict:
    """The `top` XLA op kinds of the train step (profile_ops), ms per step, and their total."""
    ops = profile_ops(lambda: bench.run_step(0.9), num_steps)
    return {
        "profile_ms_per_step": {kind: round(ms, 2) for kind, ms in ops[:top]},
        "profile_total_ms_per_step": round(sum(ms for _, ms in ops), 2),
    }


def flop_utilisation(
    flops: float, images_per_s: float, batch: int, peak: float | None = None
) -> dict:
    """The step's model FLOP utilisation against `peak` FLOP/s (default: matmul_peak()):
    `flops` are the whole step's (model_flops), the peak one device's, which is right on a CPU,
    whose simulated devices share its cores, and on one accelerator (the GPU benchmark)."""
    peak = peak or matmul_peak()
    return {"peak_gflops_per_s": peak / 1e9, "mfu": flops * images_per_s / batch / peak}


def step_memory(bench: Bench, compiled_peak_bytes: int | None) -> dict:
    """Peak memory of a train step: the device allocator's peak (GPU/TPU), else the state and
    batch plus the host's resident-memory growth during a step (as for torch), else XLA's."""
    measured = device_peak_bytes()
    growth = None if measured is not None else peak_rss_growth(lambda: bench.run_step(0.9))
    if measured is not None:
        peak_bytes, source = measured, "device memory_stats peak_bytes_in_use"
    elif growth is not None:
        peak_bytes = tree_bytes((bench.state, bench.dev_batch)) + growth
        source = "state + batch + peak RSS growth during a step"
    else:
        peak_bytes = compiled_peak_bytes
        source = "compiled.memory_analysis (args + outputs + temps - aliased)"
    return {
        "jax_peak_memory_mb": None if peak_bytes is None else peak_bytes / 2**20,
        "jax_memory_source": source,
    }


def time_torch(
    bench: Bench,
    num_steps: int,
    compile_: bool,
    jax_images_per_s: float,
    twin: tuple[str, dict] | None = None,
) -> dict:
    """The same step in PyTorch on the same batch (torch_twins.benchmark), and JAX / PyTorch;
    `twin`: the torch backbone's name and kwargs where they are not the config's (a tiny
    ViT-B/16 layout is torch_twins' ViT with a [CLS] token)."""
    from benchmarks import torch_twins  # noqa: PLC0415 (optional dependency)

    config = bench.config
    optim = {key: config.optim[key] for key in ("lr", "momentum", "weight_decay", "head_lr_factor")}
    architecture = config_checks.architecture_kwargs(config.model.kwargs)
    name, kwargs = twin or (config.model.name, architecture)
    out = torch_twins.benchmark(
        name,
        kwargs,
        bench.host_batch["image"],
        bench.host_batch["label"],
        optim=optim,
        dropout_rate=0.9,
        freeze_bn=config.model.freeze_bn,
        steps=num_steps,
        dtype=config.model.dtype,
        compile_=compile_,
    )
    out["torch_saved_activation_mb_per_image"] = torch_twins.saved_activation_mb(
        name, kwargs, bench.host_batch["image"].shape[1], dtype=config.model.dtype
    )
    for variant in TORCH_VARIANTS:
        key = f"torch_{variant}_images_per_s"
        if key in out:
            out[f"jax_over_torch_{variant}"] = jax_images_per_s / out[key] if out[key] else None
    return out


def time_input_pipeline(
    config: ml_collections.ConfigDict, batch: int, data_dir: str | None
) -> dict:
    """Images/s of the demo's real tf.data path on the embedded digits data (run.load_data),
    and images per CPU-second (all threads): on a host whose cores also run the step, or must
    feed an accelerator, the pipeline's CPU time is its cost, not its rate alone."""
    from richft_jax import run  # noqa: PLC0415 (TensorFlow: only this measurement reads data)
    from richft_jax.data import pipeline  # noqa: PLC0415

    data = run.load_data(config, data_dir)
    per_domain = batch // len(data.train_domains)
    it = pipeline.train_dataset(
        data,
        seed=config.seed,
        batch_size_per_domain=per_domain,
        start_step=0,
        num_steps=10**6,
        augment=config.data.augment,
    ).as_numpy_iterator()
    it.__next__()  # The pipeline started and its first batches made.
    calls, cpu, wall = 50, time.process_time(), time.perf_counter()
    for _ in range(calls):
        it.__next__()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    images = calls * per_domain * len(data.train_domains)
    return {"input_images_per_s": images / wall, "input_images_per_cpu_s": images / cpu}


def ensemble_members(bench: Bench, k: int) -> list[dict]:
    """K distinct models on the device: θ0 with its parameters shifted by 0.01 i."""
    params, batch_stats = bench.variables["params"], bench.variables["batch_stats"]
    members = [
        {"params": jax.tree.map(lambda p, i=i: p + 0.01 * i, params), "batch_stats": batch_stats}
        for i in range(k)
    ]
    return jax.device_put(members)


def eval_images(bench: Bench) -> jax.Array:
    """The benchmark batch's images as the model sees them."""
    return pixels.normalize(jnp.asarray(bench.host_batch["image"]), bench.config.data.normalize)


def time_ensemble(bench: Bench, members: list[dict]) -> dict:
    """A K-model ensemble (stacked + vmapped; all at once and one per pass) against K singles."""
    logits, k = steps.model_logits(bench.model), len(members)
    images = eval_images(bench)
    single = jax.jit(logits)
    t_single = timeit(lambda: [single(m, images).block_until_ready() for m in members], 5)
    stacked = ws.stack(members)
    out = {}
    for key, per_pass in (("", None), ("_one_per_pass", 1)):
        ensemble = jax.jit(
            lambda v, x, n=per_pass: ws.ensemble_logits(logits, v, x, "sum_logits", n)
        )
        t_ens = timeit(lambda e=ensemble: e(stacked, images).block_until_ready(), 5)
        out[f"ensemble{k}_over_{k}_singles{key}"] = t_ens / t_single
    return out


def time_taylor(bench: Bench, members: list[dict]) -> dict:
    """A Taylor-model evaluation (one jvp around the first member) against a forward pass."""
    from richft_jax.analysis import linearization  # noqa: PLC0415 (imports the data pipeline)

    logits, images = steps.model_logits(bench.model), eval_images(bench)
    bs = members[0]["batch_stats"]
    apply = lambda p, x: logits({"params": p, "batch_stats": bs}, x)  # noqa: E731
    forward = jax.jit(apply)
    taylor = jax.jit(lambda p0, p, x: linearization.taylor_model(apply, p0, p, x))
    p0, p1 = members[0]["params"], members[-1]["params"]
    t_forward = timeit(lambda: forward(p1, images).block_until_ready(), 5)
    t_taylor = timeit(lambda: taylor(p0, p1, images).block_until_ready(), 5)
    return {"taylor_over_forward": t_taylor / t_forward}


# ----------------------------------------------------------------------------- one backbone
def benchmark_backbone(
    model_name: str,
    batch: int,
    num_steps: int,
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
    peak_size: int = 2048,
) -> dict:
    """All measurements of one backbone (and its PyTorch twin when `torch`) as one row; with
    `profile`, the top XLA op kinds of the train step; `compile_only`: XLA's numbers only; MFU
    against the peak of a `peak_size`² matmul."""
    image_size = image_size or (32 if model_name in DEMO_MODELS else 224)
    bench = setup(model_name, batch, image_size, dtype, remat, devices)
    out = header(bench, remat)
    if compile_only:
        return out | compiled_step(bench)[0]
    peaks = [matmul_peak(peak_size)]  # Around the timed steps: a VM's speed drifts over minutes.
    out |= time_train_step(bench, num_steps)
    peaks.append(matmul_peak(peak_size))
    jax_rate = out["train_images_per_s_dropout0.9"]
    if profile:
        out |= profile_step(bench, num_steps, profile)
    compiled, costs = compiled_step(bench)
    flops = model_flops(bench.step, bench.state, bench.dev_batch, jnp.float32(0.9), bench.lr)
    out |= compiled | {"model_gflops_per_step": flops / 1e9}
    out |= flop_utilisation(flops, jax_rate, batch, max(peaks))
    out["peak_gflops_per_s_before_after_steps"] = [p / 1e9 for p in peaks]
    out["peak_matmul_size"] = peak_size
    out |= step_memory(bench, costs["peak_bytes"])
    out["jax_saved_activation_mb_per_image"] = saved_activation_mb(bench)
    out |= time_eval(bench, num_steps)
    if torch:
        out |= time_torch(bench, num_steps, torch_compile, jax_rate)
        out |= time_torch_eval(bench, num_steps, out["eval_images_per_s"])
    out |= time_input_pipeline(bench.config, batch, data_dir)
    out["input_over_step"] = out["input_images_per_s"] / jax_rate
    out["input_cpus_at_step_rate"] = jax_rate / out["input_images_per_cpu_s"]
    members = ensemble_members(bench, k)
    return out | time_ensemble(bench, members) | time_taylor(bench, members)


def format_table(rows: list[dict]) -> str:
    """One markdown table: a line per measurement, a column per backbone; then each backbone's
    profile (op kind: ms per step), when one was taken."""
    keys = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], dict)))

    def cell(v) -> str:
        if isinstance(v, list):
            return " / ".join(cell(x) for x in v)
        return f"{v:.3g}" if isinstance(v, float) else str(v)

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
