"""Layers the backbones and the classifier share: inverted feature dropout, drop path
(stochastic depth) and its per-block rates, the convnets' bias-free convolution, BatchNorm
(frozen: its parameters' gradients summed over rows on a CPU) and stem max-pool, and GELU and
softmax that keep one tensor for the backward pass.

They live with the models (not with the training methods) so `richft_jax.models` imports
nothing from `richft_jax.methods`. Every rate may be a traced scalar, so a schedule
(methods/feature_dropout.py) can change it every step without recompiling the train step.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from richft_jax.config_checks import CONV_IMPL


def feature_dropout(features: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Very large dropout on the penultimate features (Zhang & Bottou, arXiv 2403.00946).

    Zeroes each feature with probability `rate` and rescales the kept ones by 1/(1-rate)
    (inverted), so the head sees the same expected activation at train and eval time.
    """
    rate = jnp.asarray(rate, features.dtype)
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, features.shape)
    # rate == 1 keeps nothing; guard the division so the output is 0, not NaN.
    scale = jnp.where(keep_prob > 0, 1.0 / jnp.maximum(keep_prob, 1e-12), 0.0)
    return jnp.where(keep, features * scale, jnp.zeros_like(features))


def drop_path(branch: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016): zeroes the residual `branch` [N, ...] of each
    example with probability `rate` and rescales the kept ones by 1/(1-rate) (inverted)."""
    rate = jnp.asarray(rate, branch.dtype)
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, (branch.shape[0],) + (1,) * (branch.ndim - 1))
    scale = jnp.where(keep_prob > 0, 1.0 / jnp.maximum(keep_prob, 1e-12), 0.0)
    return jnp.where(keep, branch * scale, jnp.zeros_like(branch))


def depth_rates(rate: jax.Array | float, depth: int) -> list[jax.Array]:
    """Per-block drop-path rates rising linearly with depth: 0 for the first block, `rate` for
    the last (the stochastic-depth rule of DeiT/ConvNeXt, used by Liu et al. 2023)."""
    if depth < 1:
        raise ValueError(f"depth_rates: depth={depth} must be at least 1.")
    rate = jnp.asarray(rate, jnp.float32)
    if depth == 1:
        return [rate]
    return [rate * (i / (depth - 1)) for i in range(depth)]


def batch_norm(train: bool, dtype: jnp.dtype, name: str) -> nn.Module:
    """BatchNorm with torch's defaults (eps 1e-5, momentum 0.1 = Flax 0.9): nn.BatchNorm when
    `train` (batch statistics, running statistics updated), else `FrozenBatchNorm` (the
    running statistics; the same variables and function)."""
    if train:
        return nn.BatchNorm(
            use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
        )
    return FrozenBatchNorm(1e-5, dtype, name=name)


class FrozenBatchNorm(nn.Module):
    """nn.BatchNorm(use_running_average=True): its variables (params `scale`, `bias`;
    batch_stats `mean`, `var`), initial values and function (x - mean) * rsqrt(var + eps) *
    scale + bias, computed in float32 and cast to `dtype`, with the affine as `scale_bias`
    (its parameters' gradients summed over rows: 3-12x faster on a CPU at ResNet-50's sizes).
    Evaluation, and training with frozen statistics (`model.freeze_bn`), use it."""

    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        mean = self.variable("batch_stats", "mean", jnp.zeros, (d,), jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, (d,), jnp.float32).value
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        mul = lax.rsqrt(var + self.epsilon) * scale
        y = scale_bias(x - mean, mul, bias)
        return y.astype(self.dtype or jnp.result_type(x, scale))


def conv_as_dot(impl: str, window: int, out_hw: tuple[int, int]) -> bool:
    """Whether a convolution runs as matmuls: with `impl` "dot" (or "auto" on a CPU), those
    XLA's CPU backend runs slowly: 1x1 windows (it transposes activations around their
    gradients) and windows with more taps than the output has pixels (it swaps the operands)."""
    if impl not in CONV_IMPL:
        raise ValueError(f"conv_impl={impl!r} is not one of {CONV_IMPL}.")
    if impl == "conv" or (impl == "auto" and jax.default_backend() != "cpu"):
        return False
    return window == 1 or window * window > out_hw[0] * out_hw[1]


class Conv(nn.Module):
    """A bias-free k x k convolution with torch's symmetric padding k // 2 and nn.Conv's
    parameter (`kernel`, (k, k, in, out)), initialisation and function; where `conv_as_dot`
    says so, one matmul of the k*k shifted windows (im2col) over the (batch * pixels) rows."""

    features: int
    kernel_size: int
    stride: int = 1
    impl: str = "auto"  # config_checks.CONV_IMPL
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, pad = self.kernel_size, self.stride, self.kernel_size // 2
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        n, h, w, _ = x.shape
        ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        if not conv_as_dot(self.impl, k, (ho, wo)):
            return lax.conv_general_dilated(
                x, kernel, (s, s), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        rows, cols = (slice(i, i + s * (ho - 1) + 1, s) for i in range(k)), range(k)
        windows = [x[:, r, slice(j, j + s * (wo - 1) + 1, s)] for r in rows for j in cols]
        patches = jnp.concatenate(windows, axis=-1).reshape(n * ho * wo, -1)
        return (patches @ kernel.reshape(-1, self.features)).reshape(n, ho, wo, self.features)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """nn.max_pool(x, (3, 3), (2, 2), padding 1): the ResNet stem's pool, same values and
    gradients (the window's first maximum in row-major order gets the gradient, as XLA's
    select-and-scatter gives it).

    On a CPU, for even sides, it is computed from the 9 windows of a (2 x 2)-phase view
    (unit-stride slices, so the backward pass is pads and selects): XLA's CPU select-and-scatter
    took 186 ms for the gradient of a (16, 112, 112, 64) input (ResNet-50's stem at batch 16,
    a tenth of its step), this 41 ms (forward included)."""
    n, h, w, c = x.shape
    if jax.default_backend() != "cpu" or h % 2 or w % 2:
        return nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    ho, wo = h // 2, w // 2
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    phases = padded.reshape(n, ho + 1, 2, wo + 1, 2, c)  # padded[2u + a, 2v + b] at (u, a, v, b)
    windows = [
        phases[:, i // 2 : i // 2 + ho, i % 2, j // 2 : j // 2 + wo, j % 2]
        for i in range(3)
        for j in range(3)
    ]
    values = [lax.stop_gradient(win) for win in windows]
    top = functools.reduce(jnp.maximum, values)
    first = jnp.full(top.shape, len(windows) - 1, jnp.int8)  # The first window holding the max.
    for k in reversed(range(len(windows) - 1)):
        first = jnp.where(values[k] == top, jnp.int8(k), first)
    return sum(jnp.where(first == k, win, 0) for k, win in enumerate(windows))


# What the backward pass keeps. Autodiff keeps every intermediate of an element-wise chain it
# differentiates: tanh-GELU's five (batch * tokens, mlp_dim) intermediates, softmax's exp and
# quotient, LayerNorm's three float32 copies of its input. The two functions below keep one
# tensor each and recompute or reuse the rest; vit.LayerNorm recomputes its statistics.
@jax.checkpoint
def gelu(x: jax.Array) -> jax.Array:
    """nn.gelu (tanh approximation); the backward pass keeps only `x` and recomputes."""
    return nn.gelu(x, approximate=True)


@jax.custom_jvp
def softmax(x: jax.Array) -> jax.Array:
    """jax.nn.softmax over the last axis, differentiated through its output y alone
    (dx -> y * (dx - sum(dx * y))): the backward pass keeps y; forward mode (the Taylor
    model's jvp) works as for any function."""
    return jax.nn.softmax(x, axis=-1)


@softmax.defjvp
def _softmax_jvp(primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    y = softmax(x)
    return y, y * (dx - jnp.sum(dx * y, axis=-1, keepdims=True))


# Parameter gradients as sums over rows. The gradient of a (D,) scale or bias broadcast over a
# (batch, h, w, D) array is a sum over its leading axes, which XLA's CPU backend tree-reduces in
# windows of the 4-D array: 94 ms for (32, 56, 56, 256) and 10.5 ms for (32, 7, 7, 2048) against
# 35 and 0.9 ms over the rows of the 2-D array behind an optimization barrier (without it XLA
# folds the reshape back into the 4-D reduction). The barrier costs fusions: below
# ROWS_MIN_SIZE elements (the demo ResNet's BatchNorms, at most 0.5 M) the plain broadcast was
# faster (that step 0.73x with rows everywhere), and in ViT-B/16's LayerNorms the two broke
# even. On other backends the plain broadcast (one fused reduction, no extra pass).
ROWS_MIN_SIZE = 1 << 20


def broadcast_rows(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`v` (D,) broadcast to `shape` (..., D); on a CPU through (rows, D) behind an
    optimization barrier, so its transpose (a gradient's sum) runs over 2-D rows."""
    if jax.default_backend() != "cpu" or len(shape) < 3 or math.prod(shape) < ROWS_MIN_SIZE:
        return jnp.broadcast_to(v, shape)
    rows = jnp.broadcast_to(v, (math.prod(shape[:-1]), shape[-1]))
    return lax.optimization_barrier(rows).reshape(shape)


@jax.custom_jvp
def scale_bias(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """x * scale + bias over the last axis (a normalisation's affine); the parameters'
    gradients summed over rows (`broadcast_rows`)."""
    return x * scale + bias


@scale_bias.defjvp
def _scale_bias_jvp(primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    (x, scale, bias), (dx, dscale, dbias) = primals, tangents
    dy = dx * scale + x * broadcast_rows(dscale, x.shape) + broadcast_rows(dbias, x.shape)
    return scale_bias(x, scale, bias), dy
