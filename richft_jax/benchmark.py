"""Throughput benchmark of the train step and evaluation paths: prints a table, writes JSON.

  python -m richft_jax.benchmark [--model=small_resnet] [--batch=128] [--steps=30] [--k=4]
      [--out=benchmark.json]

Numbers, not assertions: train-step images/s and model FLOP utilisation against the measured
peak of this device (a large jitted matmul timed in the same process), feature-dropout
overhead (rate 0.9 vs 0), input-pipeline images/s against the step, the cost of a K-model
vmapped ensemble evaluation against K single evaluations, and of a Taylor-model evaluation
(one jvp) against a forward pass.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from richft_jax import config_lib, parallel, train
from richft_jax.analysis import linearization
from richft_jax.data import pipeline
from richft_jax.methods import weight_space as ws
from richft_jax.models import registry


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


def flops_of(jitted, *args) -> float:
    """FLOPs of one call from XLA's cost analysis (0 if the backend does not report it)."""
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))


def run(model_name: str, batch: int, steps: int, k: int, data_dir: str | None = None) -> dict:
    """All measurements for one backbone."""
    config = config_lib.load_config_file("configs/demo.py")
    config.model.name = model_name
    if model_name != "small_resnet":
        config.model.kwargs = {}
    mesh = parallel.make_mesh()
    model = registry.build_classifier(config.model, 10)
    tx = train.make_optimizer(config.optim, 1000)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
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
        "image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
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
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
    }
    holder = {"state": state}  # The step donates its state: always pass the newest one.
    for rate in (0.0, 0.9):

        def one(rate=rate):
            holder["state"], m = step(holder["state"], dev_batch, jnp.float32(rate))
            jax.block_until_ready(m)

        out[f"train_images_per_s_dropout{rate}"] = batch / timeit(one, steps)
    state = holder["state"]
    flops = flops_of(step, state, dev_batch, jnp.float32(0.9))
    peak = matmul_peak()
    out["train_step_gflops"] = flops / 1e9
    out["peak_gflops_per_s"] = peak / 1e9
    out["mfu"] = flops * out["train_images_per_s_dropout0.9"] / batch / peak
    out["dropout_overhead"] = (
        out["train_images_per_s_dropout0.0"] / out["train_images_per_s_dropout0.9"] - 1.0
    )

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

    # Ensemble of K models (stacked + vmapped) against K single evaluations.
    logits = train.model_logits(model)
    # Fresh variables: the train state built from the first ones was donated to the step.
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_resnet", help="Comma-separated backbones.")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--k", type=int, default=4, help="Ensemble size.")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's).")
    args = parser.parse_args(argv)
    rows = [run(m, args.batch, args.steps, args.k, args.data_dir) for m in args.model.split(",")]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
            + " |"
        )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
