"""The ViT's attention core (q·kᵀ, softmax, ·v; the projections left out), forward and backward,
next to PyTorch's scaled_dot_product_attention and a projection-sized matmul on the same device.

  python -m benchmarks.attention [--batch=16] [--tokens=197] [--heads=12] [--head_dim=64]
      [--dtype=float32|bfloat16] [--repeats=15] [--out=attention.json]

The ViT-B/16 step's FLOPs are mostly its projections and MLP (large 2-D matmuls); attention's
are small batched ones (a tokens x head_dim by head_dim x tokens product per image and head),
about 4 % of the FLOPs at 224 px but more of the time. One row per implementation: JAX's
`models.vit.attend` (the ViT's own core) for each `attention` that runs on this backend, under
jit, and PyTorch's (when importable) in eager mode; each the gradient of sum(y * g) w.r.t. q, k
and v, median milliseconds of `repeats` calls, GFLOP/s (forward 4·B·H·T²·Dh, backward twice
that), that rate over the projection matmul's (the (B·T, D) x (D, 3D) q/k/v matmul, same
dtype), and the largest difference of its gradient from the einsum core's.
"""

import importlib.util
import json

import numpy as np
from absl import app, flags

from benchmarks.measure import timeit

BATCH = flags.DEFINE_integer("batch", 16, "Images.", lower_bound=1)
TOKENS = flags.DEFINE_integer("tokens", 197, "Tokens per image (ViT-B/16 at 224 px: 197).")
HEADS = flags.DEFINE_integer("heads", 12, "Attention heads.", lower_bound=1)
HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Features per head.", lower_bound=1)
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
REPEATS = flags.DEFINE_integer("repeats", 15, "Timed calls per row.", lower_bound=1)
OUT = flags.DEFINE_string("out", None, "Also write the rows as JSON here.")


def jax_rows(
    shape: tuple[int, int, int, int], dtype: str, repeats: int
) -> tuple[list[dict], float, tuple[np.ndarray, np.ndarray]]:
    """The JAX rows (one per `attention` implementation that runs here, each with its
    gradients as float32 numpy for the comparison), the projection matmul's GFLOP/s, and the
    inputs (qkv, g) as float32 numpy."""
    import jax  # noqa: PLC0415 (flags first)
    import jax.numpy as jnp  # noqa: PLC0415

    from richft_jax.models import vit  # noqa: PLC0415

    b, t, h, dh = shape
    k1, k2 = jax.random.split(jax.random.key(0))
    qkv = jax.random.normal(k1, (b, t, 3, h, dh)).astype(dtype)
    g = jax.random.normal(k2, (b, t, h, dh)).astype(dtype)
    impls = ["einsum", "xla"] + (["cudnn"] if jax.default_backend() == "gpu" else [])
    rows = []
    for impl in impls:
        grad = jax.jit(jax.grad(lambda x, impl=impl: jnp.sum(vit.attend(x, impl) * g)))
        try:
            dqkv = grad(qkv).block_until_ready()
        except Exception as e:  # noqa: BLE001 (an implementation this backend lacks: say so)
            rows.append({"framework": "jax", "impl": impl, "error": f"{type(e).__name__}: {e}"})
            continue
        seconds = timeit(lambda grad=grad: grad(qkv).block_until_ready(), repeats)
        grads = np.asarray(dqkv.astype(jnp.float32)).transpose(2, 0, 1, 3, 4)  # (3, b, t, h, dh)
        rows.append({"framework": "jax", "impl": impl, "seconds": seconds, "grads": grads})
    x = jnp.ones((b * t, h * dh), dtype)
    w = jnp.ones((h * dh, 3 * h * dh), dtype)
    matmul = jax.jit(lambda x, w: x @ w)
    seconds = timeit(lambda: matmul(x, w).block_until_ready(), repeats)
    projection = 2 * b * t * (h * dh) * (3 * h * dh) / seconds / 1e9
    inputs = (np.asarray(qkv.astype(jnp.float32)), np.asarray(g.astype(jnp.float32)))
    return rows, projection, inputs


def torch_row(qkv: np.ndarray, g: np.ndarray, dtype: str, repeats: int) -> dict:
    """PyTorch eager's scaled_dot_product_attention (the torch twin's), same inputs, on CUDA
    when there is one."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = getattr(torch, dtype)

    def heads_first(x: np.ndarray) -> torch.Tensor:  # (b, t, h, dh) -> (b, h, t, dh)
        return torch.tensor(x, device=device, dtype=tdtype).transpose(1, 2).contiguous()

    q, k, v = (heads_first(qkv[:, :, i]).requires_grad_() for i in range(3))
    tg = heads_first(g)

    def step() -> None:
        for x in (q, k, v):
            x.grad = None
        (F.scaled_dot_product_attention(q, k, v) * tg).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = timeit(step, repeats)
    grads = np.stack([x.grad.transpose(1, 2).float().cpu().numpy() for x in (q, k, v)])
    return {"framework": "torch", "impl": f"sdpa ({device})", "seconds": seconds, "grads": grads}


def measure(shape: tuple[int, int, int, int], dtype: str, repeats: int, torch: bool) -> dict:
    """Every row (without its gradients) and the projection matmul's GFLOP/s."""
    rows, projection, inputs = jax_rows(shape, dtype, repeats)
    if torch:
        rows.append(torch_row(*inputs, dtype, repeats))
    b, t, h, dh = shape
    flops = 3 * 4 * b * h * t * t * dh
    reference = next(r["grads"] for r in rows if r.get("impl") == "einsum")
    for r in rows:
        if "seconds" in r:
            r["fwd_bwd_ms"] = r["seconds"] * 1e3
            r["gflop_per_s"] = flops / r.pop("seconds") / 1e9
            r["of_projection_matmul"] = r["gflop_per_s"] / projection
            r["max_grad_diff_vs_einsum"] = float(np.max(np.abs(r.pop("grads") - reference)))
    shape_names = dict(zip(("batch", "tokens", "heads", "head_dim"), shape, strict=True))
    return {**shape_names, "dtype": dtype, "projection_gflop_per_s": projection, "rows": rows}


def main(argv: list[str]) -> None:
    del argv
    from richft_jax import xla_cpu  # noqa: PLC0415

    xla_cpu.tune()  # Before JAX starts: the flags the train steps run with.
    shape = (BATCH.value, TOKENS.value, HEADS.value, HEAD_DIM.value)
    has_torch = importlib.util.find_spec("torch") is not None
    result = measure(shape, DTYPE.value, REPEATS.value, has_torch)
    print(
        f"attention core fwd+bwd, batch {shape[0]}, {shape[1]} tokens, {shape[2]} heads x "
        f"{shape[3]}, {DTYPE.value}; projection matmul "
        f"{result['projection_gflop_per_s']:.0f} GFLOP/s"
    )
    for r in result["rows"]:
        if "error" in r:
            print(f"  {r['framework']} {r['impl']}: {r['error']}")
            continue
        print(
            f"  {r['framework']} {r['impl']}: {r['fwd_bwd_ms']:.1f} ms, "
            f"{r['gflop_per_s']:.0f} GFLOP/s ({r['of_projection_matmul']:.0%} of the "
            f"projection's), grad diff {r['max_grad_diff_vs_einsum']:.1e}"
        )
    if OUT.value:
        with open(OUT.value, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
