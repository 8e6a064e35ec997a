"""The ViT's attention core (q·kᵀ, softmax, ·v; the projections left out), forward and backward,
next to PyTorch's scaled_dot_product_attention and a projection-sized matmul on the same device.

  python -m benchmarks.attention [--batch=16] [--tokens=197] [--heads=12] [--head_dim=64]
      [--dtype=float32|bfloat16] [--repeats=5] [--rounds=4] [--out=attention.json]

The ViT-B/16 step's FLOPs are mostly its projections and MLP (large 2-D matmuls); attention's
are small batched ones (a tokens x head_dim by head_dim x tokens product per image and head),
about 4 % of the FLOPs at 224 px but more of the time. One row per implementation: JAX's
`models.vit.attend` (the ViT's own core) under jit for each `attention` that runs on this
backend, and PyTorch's SDPA (when importable) in eager mode. Each is the gradient of
sum(y * g) w.r.t. q, k and v; the rows are timed in turn, `rounds` rounds of `repeats` calls
(the median round is kept: the machine's speed moves between rounds), with GFLOP/s (forward
4·B·H·T²·Dh, backward twice that), that rate over the projection matmul's (the (B·T, D) x
(D, 3D) q/k/v matmul, same dtype) and the largest difference of its gradient from the
einsum core's.
"""

import importlib.util
import json
from collections.abc import Callable

import numpy as np
from absl import app, flags

from benchmarks.measure import timeit

BATCH = flags.DEFINE_integer("batch", 16, "Images.", lower_bound=1)
TOKENS = flags.DEFINE_integer("tokens", 197, "Tokens per image (ViT-B/16 at 224 px: 197).")
HEADS = flags.DEFINE_integer("heads", 12, "Attention heads.", lower_bound=1)
HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Features per head.", lower_bound=1)
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per row and round.", lower_bound=1)
ROUNDS = flags.DEFINE_integer("rounds", 4, "Rounds over all rows.", lower_bound=1)
OUT = flags.DEFINE_string("out", None, "Also write the rows as JSON here.")

Row = tuple[dict, Callable[[], object], np.ndarray]  # (row, one blocking call, gradients)


def jax_rows(
    shape: tuple[int, int, int, int], dtype: str
) -> tuple[list[Row], Callable[[], object], tuple[np.ndarray, np.ndarray]]:
    """The JAX rows (one per `attention` implementation that runs here; gradients as
    float32 numpy (3, b, t, h, dh)), one call of the projection matmul, and the inputs."""
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
        loss = lambda x, impl=impl: jnp.sum(vit.attend(x, impl) * g)  # noqa: E731
        grad = jax.jit(jax.grad(loss))
        row = {"framework": "jax", "impl": impl}
        try:
            dqkv = grad(qkv).block_until_ready()
        except Exception as e:  # noqa: BLE001 (an implementation this backend lacks: say so)
            rows.append((row | {"error": f"{type(e).__name__}: {e}"}, None, None))
            continue
        grads = np.asarray(dqkv.astype(jnp.float32)).transpose(2, 0, 1, 3, 4)
        rows.append((row, lambda grad=grad: grad(qkv).block_until_ready(), grads))
    x = jnp.ones((b * t, h * dh), dtype)
    w = jnp.ones((h * dh, 3 * h * dh), dtype)
    matmul = jax.jit(lambda x, w: x @ w)
    inputs = (np.asarray(qkv.astype(jnp.float32)), np.asarray(g.astype(jnp.float32)))
    return rows, lambda: matmul(x, w).block_until_ready(), inputs


def torch_row(qkv: np.ndarray, g: np.ndarray, dtype: str) -> Row:
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

    step()
    grads = np.stack([x.grad.transpose(1, 2).float().cpu().numpy() for x in (q, k, v)])
    return {"framework": "torch", "impl": f"sdpa ({device})"}, step, grads


def measure(
    shape: tuple[int, int, int, int], dtype: str, repeats: int, rounds: int, torch: bool
) -> dict:
    """Every row (its gradients compared, not kept) and the projection matmul's GFLOP/s."""
    rows, matmul, inputs = jax_rows(shape, dtype)
    if torch:
        rows.append(torch_row(*inputs, dtype))
    timed = [r for r in rows if r[1] is not None]
    calls = [fn for _, fn, _ in timed] + [matmul]
    seconds: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):  # In turn: each row sees the machine's speed of every round.
        for times, fn in zip(seconds, calls, strict=True):
            times.append(timeit(fn, repeats))
    *row_s, matmul_s = (float(np.median(times)) for times in seconds)
    b, t, h, dh = shape
    projection = 2 * b * t * (h * dh) * (3 * h * dh) / matmul_s / 1e9
    flops = 3 * 4 * b * h * t * t * dh
    reference = next(grads for row, _, grads in rows if row["impl"] == "einsum")
    for (row, _, grads), s in zip(timed, row_s, strict=True):
        row["fwd_bwd_ms"] = s * 1e3
        row["gflop_per_s"] = flops / s / 1e9
        row["of_projection_matmul"] = row["gflop_per_s"] / projection
        row["max_grad_diff_vs_einsum"] = float(np.max(np.abs(grads - reference)))
    names = dict(zip(("batch", "tokens", "heads", "head_dim"), shape, strict=True))
    return {
        **names,
        "dtype": dtype,
        "projection_gflop_per_s": projection,
        "rows": [r for r, _, _ in rows],
    }


def main(argv: list[str]) -> None:
    del argv
    from richft_jax import xla_cpu  # noqa: PLC0415

    xla_cpu.tune()  # Before JAX starts: the flags the train steps run with.
    shape = (BATCH.value, TOKENS.value, HEADS.value, HEAD_DIM.value)
    has_torch = importlib.util.find_spec("torch") is not None
    result = measure(shape, DTYPE.value, REPEATS.value, ROUNDS.value, has_torch)
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
