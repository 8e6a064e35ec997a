"""Small backbones for the embedded digits benchmark: fast on a 2-core CPU.

`SmallResNet` is a 4-stage ResNet of basic blocks whose last stage is widened by a
1x1 convolution, because very large dropout needs a wide penultimate representation
(with 128 features, rate 0.9 keeps ~13 per example and fine-tuning collapses).
`SmallViT` is the second option. Both map NHWC float images to (N, feature_dim).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from richft_jax.models.layers import (
    Conv,
    batch_norm,
    depth_rates,
    drop_path,
    feature_dropout,
    gelu,
)
from richft_jax.models.vit import MultiHeadAttention


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a projection shortcut when shapes change."""

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"  # layers.Conv: where convolutions are matmuls.

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = lambda f, k, s, name: Conv(f, k, s, self.conv_impl, self.dtype, name=name)  # noqa: E731
        norm = lambda name: batch_norm(train, self.dtype, name)  # noqa: E731
        y = nn.relu(norm("bn1")(conv(self.features, 3, self.strides, "conv1")(x)))
        # Plain (not zero) init of the last BN scale: zero-init residuals stalled pretraining of
        # this small net on 52 letter classes for hundreds of steps.
        y = norm("bn2")(conv(self.features, 3, 1, "conv2")(y))
        if x.shape[-1] != self.features or self.strides != 1:
            x = norm("proj_bn")(conv(self.features, 1, self.strides, "proj_conv")(x))
        return nn.relu(x + y)


class SmallResNet(nn.Module):
    """CIFAR-style ResNet with a stride-2 stem option and a widened penultimate layer."""

    widths: Sequence[int] = (16, 32, 64, 128)
    blocks: Sequence[int] = (1, 1, 1, 1)
    stem_stride: int = 1
    feature_dim: int = 512
    dtype: jnp.dtype = jnp.float32
    # config_checks.CONV_IMPL: "dot" computes the 1x1 convolutions and those whose window
    # outgrows its output (the last stage's 3x3 ones at 32 px) as matmuls, same parameters and
    # function (layers.Conv); "auto" on a CPU only; "conv" XLA's convolutions everywhere.
    conv_impl: str = "auto"

    @nn.nowrap
    def stages(self) -> list[tuple[str, tuple[str, ...]]]:
        """(stage, parameter-path prefixes) from input to output, e.g. for layer-wise radii
        (methods/self_labeling.py): the stem, stage1..stage4 (their blocks), then the widening
        conv and its BatchNorm when `feature_dim`."""
        stages = [("stem", ("stem_conv", "stem_bn"))]
        for i, n in enumerate(self.blocks):
            if n:
                stages.append(
                    (f"stage{i + 1}", tuple(f"stage{i + 1}_block{j + 1}" for j in range(n)))
                )
        if self.feature_dim:
            stages.append(("widen", ("widen_conv", "widen_bn")))
        return stages

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = lambda f, k, s, name: Conv(f, k, s, self.conv_impl, self.dtype, name=name)  # noqa: E731
        x = conv(self.widths[0], 3, self.stem_stride, "stem_conv")(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.dtype, "stem_bn")(x))
        for i, (width, n) in enumerate(zip(self.widths, self.blocks, strict=True)):
            for j in range(n):
                strides = 2 if (i > 0 and j == 0) else 1
                name = f"stage{i + 1}_block{j + 1}"
                block = BasicBlock(width, strides, self.dtype, self.conv_impl, name=name)
                x = block(x, train=train)
                # Pooled block outputs, read by linear fine-tuning (analysis.linear_finetune)
                # with mutable=["intermediates"]; otherwise sow does nothing.
                pooled = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
                self.sow("intermediates", f"{name}_pooled", pooled)
        if self.feature_dim:
            x = conv(self.feature_dim, 1, 1, "widen_conv")(x)
            x = nn.relu(batch_norm(train, self.dtype, "widen_bn")(x))
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class SmallViT(nn.Module):
    """A small pre-LayerNorm ViT (patch embedding, [CLS]-free mean pooling).

    Training-time regularisers take their rates at call time (traced: a schedule never
    recompiles): `block_dropout_rate` (inverted dropout on the attention output and on the
    MLP's hidden and output activations) and `drop_path_rate` (stochastic depth on both
    residual branches, rising linearly with depth to that rate). None (eval) turns them off.
    """

    patch: int = 4
    dim: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: int = 2
    feature_dim: int = 512
    dtype: jnp.dtype = jnp.float32

    @nn.nowrap
    def stages(self) -> list[tuple[str, tuple[str, ...]]]:
        """(stage, parameter-path prefixes) from input to output, e.g. for layer-wise radii
        (methods/self_labeling.py): the embedding (patches and positions), each block, the
        final LayerNorm, then the widening layer when `feature_dim`."""
        stages = [("embedding", ("embedding", "pos_embedding"))]
        parts = ("ln1", "attn", "ln2", "mlp1", "mlp2")
        stages += [(f"block{i}", tuple(f"block{i}_{p}" for p in parts)) for i in range(self.depth)]
        stages.append(("encoder_norm", ("encoder_norm",)))
        if self.feature_dim:
            stages.append(("widen", ("widen",)))
        return stages

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        block_dropout_rate: jax.Array | float | None = None,
        drop_path_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        del train  # no batch statistics; dropout is on exactly when a rate is passed

        def dropout(y):
            if block_dropout_rate is None:
                return y
            return feature_dropout(y, block_dropout_rate, self.make_rng("dropout"))

        path_rates = None if drop_path_rate is None else depth_rates(drop_path_rate, self.depth)
        x = nn.Conv(
            self.dim, (self.patch,) * 2, (self.patch,) * 2, dtype=self.dtype, name="embedding"
        )(x.astype(self.dtype))
        n, h, w, c = x.shape
        t = h * w
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, t, c))
        # The blocks work on (batch * tokens, dim) rows: XLA's CPU backend sums the bias and
        # LayerNorm gradients over one row axis ~20x faster than over (batch, tokens).
        x = (x.reshape(n, t, c) + pos.astype(self.dtype)).reshape(n * t, c)

        def residual(x, y, i):
            if path_rates is not None:
                y = drop_path(y.reshape(n, t, c), path_rates[i], self.make_rng("dropout"))
            return x + y.reshape(n * t, c)

        for i in range(self.depth):
            y = nn.LayerNorm(dtype=self.dtype, name=f"block{i}_ln1")(x)
            # nn.MultiHeadDotProductAttention's parameters and math (vit.py).
            attention = MultiHeadAttention(self.heads, self.dtype, name=f"block{i}_attn")
            x = residual(x, dropout(attention(y.reshape(n, t, c))), i)
            y = nn.LayerNorm(dtype=self.dtype, name=f"block{i}_ln2")(x)
            y = nn.Dense(self.dim * self.mlp_ratio, dtype=self.dtype, name=f"block{i}_mlp1")(y)
            y = nn.Dense(self.dim, dtype=self.dtype, name=f"block{i}_mlp2")(dropout(gelu(y)))
            x = residual(x, dropout(y), i)
        x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x).reshape(n, t, c).mean(axis=1)
        if self.feature_dim:
            x = nn.gelu(nn.Dense(self.feature_dim, dtype=self.dtype, name="widen")(x))
        return x.astype(jnp.float32)
