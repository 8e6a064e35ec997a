"""A/B of two model variants' train steps inside ONE process: the only fair timing on a shared,
loaded machine (both sides see the same load, interleaved).

  python -m benchmarks.model_ab [--model=resnet18] [--kwargs='{"width": 16}']
      [--a='{}'] [--b='{"KWARG": VALUE}'] [--a_rev=GIT_REVISION] [--batch=128]
      [--image_size=32] [--repeats=7] [--steps=3] [--dtype=bfloat16]
      [--a_set='{"richft_jax.models.layers.ROWS_MIN_SIZE": 1e30}']

Both sides are the benchmark's train step (throughput.setup: the demo config with `--model`,
config.model.kwargs = `--kwargs` updated by `--a` / `--b`), from the same θ0. It checks the
two parameter trees have the same names and shapes and that one step from θ0 gives the same
loss (prints the difference), then times `--repeats` rounds of `--steps` blocking steps per
side, alternating which side goes first, and prints per-side median / min images/s, the
median of the per-round ratios B / A, and the load average. XLA flags cannot be A/B'd here
(XLA reads them once per process): alternate processes (A B A B) for those.

`--a_rev=REV` A/Bs a change to a model's code: side A's backbone class comes from its module's
source at git revision REV (`git show REV:richft_jax/models/....py`, loaded under another
name; it imports the current versions of the package's other modules), side B is the
working tree's. `--a_set` sets module constants (JSON {"package.module.NAME": value}) while
side A is built, traced and compiled, then restores them: an A/B of a rule a constant switches
(the example traces side A with every parameter-gradient sum over the leading axes).
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import throughput
from richft_jax import steps, xla_cpu
from richft_jax.models import registry

FLAGS = flags.DEFINE_string("model", "resnet18", "Registry backbone name.")
KWARGS = flags.DEFINE_string(
    "kwargs",
    '{"width": 16, "stage_sizes": [1, 1, 1, 1]}',
    "JSON model kwargs of both sides (default: a demo-sized ResNet of basic blocks).",
)
A = flags.DEFINE_string("a", "{}", "JSON kwargs of side A (over --kwargs).")
B = flags.DEFINE_string("b", "{}", "JSON kwargs of side B (over --kwargs).")
BATCH = flags.DEFINE_integer("batch", 128, "Global batch.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Image side.")
REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved rounds.")
STEPS = flags.DEFINE_integer("steps", 3, "Blocking train steps per side per round.")
RATE = flags.DEFINE_float("rate", 0.9, "Feature-dropout rate of the timed steps.")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
A_REV = flags.DEFINE_string(
    "a_rev", None, "Git revision of side A's backbone module (e.g. HEAD~1); default: the tree's."
)
A_SET = flags.DEFINE_string(
    "a_set", "{}", 'JSON {"package.module.NAME": value}: constants while side A is traced.'
)


def build(kwargs: dict) -> throughput.Bench:
    """The benchmark's train step of `--model` with these kwargs."""
    return throughput.setup(
        FLAGS.value, BATCH.value, IMAGE_SIZE.value, DTYPE.value, False, None, kwargs
    )


def shapes(bench: throughput.Bench) -> dict:
    """Parameter and batch-statistics paths -> shapes."""
    return {
        jax.tree_util.keystr(k): v.shape
        for k, v in jax.tree_util.tree_leaves_with_path(bench.variables)
    }


def first_loss(bench: throughput.Bench, variables: dict) -> float:
    """Loss of one step from `variables` (the other side's θ0, so both start equal)."""
    tx = steps.make_optimizer(bench.config.optim)
    state = steps.create_train_state(
        variables["params"], variables["batch_stats"], tx, np.asarray(bench.state.rng)
    )
    _, metrics = bench.step(jax.device_put(state), bench.dev_batch, np.float32(0.0), bench.lr)
    return float(metrics.compute()["loss"])


def time_steps(bench: throughput.Bench, n: int) -> float:
    """Seconds per blocking step over n steps."""
    start = time.perf_counter()
    for _ in range(n):
        bench.run_step(RATE.value)
    return (time.perf_counter() - start) / n


def main(argv):
    del argv
    base = json.loads(KWARGS.value)
    kw_a, kw_b = {**base, **json.loads(A.value)}, {**base, **json.loads(B.value)}
    current = registry.BACKBONES[FLAGS.value]
    if A_REV.value:
        registry.BACKBONES[FLAGS.value] = throughput.backbone_at(A_REV.value, FLAGS.value)
    try:
        # Side A built, traced and compiled with --a_set's constants.
        with throughput.module_constants(json.loads(A_SET.value)):
            a = build(kw_a)
            loss_a = first_loss(a, a.variables)
            time_steps(a, 2)  # compile + warm up
    finally:
        registry.BACKBONES[FLAGS.value] = current
    b = build(kw_b)
    if shapes(a) != shapes(b):
        raise SystemExit(f"parameter trees differ:\n{shapes(a)}\n{shapes(b)}")
    loss_b = first_loss(b, a.variables)
    time_steps(b, 2)
    at = f" (backbone module at {A_REV.value})" if A_REV.value else ""
    at += f" (constants {A_SET.value})" if json.loads(A_SET.value) else ""
    print(
        f"A={kw_a}{at}\nB={kw_b}\nsame parameter tree; first-step loss A {loss_a:.6f} "
        f"B {loss_b:.6f} (diff {abs(loss_a - loss_b):.2e})",
        flush=True,
    )
    times = {"A": [], "B": []}
    for r in range(REPEATS.value):
        for side in "AB" if r % 2 == 0 else "BA":
            times[side].append(time_steps(a if side == "A" else b, STEPS.value))
        print(
            f"round {r}: A {BATCH.value / times['A'][-1]:.1f} img/s, "
            f"B {BATCH.value / times['B'][-1]:.1f} img/s, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    ratios = np.array(times["A"]) / np.array(times["B"])
    for side in "AB":
        t = np.array(times[side])
        print(
            f"{side}: median {BATCH.value / np.median(t):.1f} img/s, "
            f"best {BATCH.value / t.min():.1f}"
        )
    print(
        f"B / A speed: median {np.median(ratios):.3f} (rounds: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}); load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    xla_cpu.tune()
    app.run(main)
