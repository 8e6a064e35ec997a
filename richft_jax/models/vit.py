"""Vision Transformer laid out exactly as the published vision_transformer / augreg checkpoints.

Parameter names and shapes are those of the `.npz` files of google-research's
vision_transformer (augreg ImageNet-21k and 21k->1k, Steiner et al. 2021), so a checkpoint loads
by name with no renaming: `embedding`, `cls`, `Transformer/posembed_input/pos_embedding`
(1, 1 + grid^2, D: the [CLS] token has a position too), `Transformer/encoderblock_{i}/
{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`,
`Transformer/encoder_norm`, optional `pre_logits`, `head`. The math is big_vision's (pre-LN
blocks, LayerNorm eps 1e-6, tanh-approximated GELU, [CLS] pooling); inputs are in [-1, 1].
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from richft_jax.config_checks import VIT_ATTENTION
from richft_jax.models.layers import depth_rates, drop_path, feature_dropout, gelu, softmax

# Table 2 of Steiner et al. 2021 ("How to train your ViT"); patch size 16.
VARIANTS = {
    "vit_s16": {"width": 384, "depth": 12, "mlp_dim": 1536, "num_heads": 6},
    "vit_b16": {"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12},
    "vit_l16": {"width": 1024, "depth": 24, "mlp_dim": 4096, "num_heads": 16},
}


def resize_position_embedding(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
    """Resizes a (1, 1 + g^2, D) position embedding to (1, num_tokens, D): the [CLS] entry is
    kept, the g x g grid is resized bilinearly (half-pixel centres, no antialiasing: torch's
    `interpolate(mode="bilinear", align_corners=False)`), as for fine-tuning at another size."""
    posemb = np.asarray(posemb)
    if posemb.shape[1] == num_tokens:
        return posemb
    old, new = _grid_side(posemb.shape[1] - 1), _grid_side(num_tokens - 1)
    if old is None or new is None:
        raise ValueError(
            f"pos_embedding: cannot resize {posemb.shape[1]} tokens to {num_tokens}: both "
            "must be 1 [CLS] + a square grid of patches."
        )
    dim = posemb.shape[-1]
    grid = jnp.asarray(posemb[0, 1:].reshape(old, old, dim), jnp.float32)
    grid = jax.image.resize(grid, (new, new, dim), "bilinear", antialias=False)
    grid = np.asarray(grid, posemb.dtype).reshape(1, new * new, dim)
    return np.concatenate([posemb[:, :1], grid], axis=1)


def _grid_side(n: int) -> int | None:
    """The side of a square grid of n patches, or None if n is not a square."""
    side = int(round(np.sqrt(n)))
    return side if side * side == n and side > 0 else None


# Layout for XLA's CPU backend (issue 17): every projection is one 2-D matmul over the flattened
# batch x tokens rows, q/k/v come from one fused matmul, and LayerNorm's statistics are
# matrix-vector products. The train step of the 3-D DenseGeneral / reduction layout spent ~45 % in
# head transposes/copies and tree-reduced sums (reduce-window); parameters stay as published.
# (Bias gradients as ones @ dy instead of sums measured no faster: the reduce-window time moved
# into dots.)
LAYERNORM_STATS_AS_DOT = True  # LayerNorm's mean and E[x^2] as x @ (1/D) (a dot, not a reduce).


class LayerNorm(nn.Module):
    """nn.LayerNorm's parameters (`scale`, `bias`) and math (float32 statistics, fast variance
    E[x^2] - E[x]^2 clipped at 0, eps), with the statistics as matrix-vector products
    (LAYERNORM_STATS_AS_DOT)."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        return _layer_norm(x, scale, bias, self.epsilon, self.dtype)


@functools.partial(jax.checkpoint, static_argnums=(3, 4))
def _layer_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, dtype: jnp.dtype
) -> jax.Array:
    """LayerNorm's math; the backward pass keeps `x` (not three float32 copies of it) and
    recomputes the statistics."""
    x32 = x.astype(jnp.promote_types(dtype, jnp.float32))
    if LAYERNORM_STATS_AS_DOT:
        weights = jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], x32.dtype)
        mean, mean2 = x32 @ weights, (x32 * x32) @ weights
    else:
        mean, mean2 = x32.mean(-1, keepdims=True), (x32 * x32).mean(-1, keepdims=True)
    var = jnp.maximum(mean2 - mean * mean, 0.0)
    normed = (x32 - mean) * jax.lax.rsqrt(var + epsilon)
    return (normed * scale + bias).astype(dtype)


class _DenseParams(nn.Module):
    """The kernel and bias of one of nn.DenseGeneral's projections, created as it creates them
    (names, shapes, lecun-normal over the flattened (in, out) kernel, zero bias), not applied."""

    kernel_shape: tuple[int, ...]
    in_axes: int  # Leading kernel axes that are input axes.

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        flat = (
            int(np.prod(self.kernel_shape[: self.in_axes])),
            int(np.prod(self.kernel_shape[self.in_axes :])),
        )

        def init(key, shape, dtype=jnp.float32):
            return nn.initializers.lecun_normal()(key, flat, dtype).reshape(shape)

        kernel = self.param("kernel", init, self.kernel_shape)
        bias = self.param("bias", nn.initializers.zeros, self.kernel_shape[self.in_axes :])
        return kernel, bias


ATTENTION = VIT_ATTENTION[1:]  # jax.nn.dot_product_attention's implementations.


def attend(qkv: jax.Array, attention: str = "einsum") -> jax.Array:
    """Scaled dot-product self-attention of q, k, v = qkv[:, :, 0..2] (batch, tokens, heads,
    head_dim each) in qkv's dtype, by `attention` (MultiHeadAttention's); (batch, tokens,
    heads, head_dim) out."""
    if attention == "einsum":
        q = qkv[:, :, 0] / jnp.sqrt(qkv.shape[-1]).astype(qkv.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, qkv[:, :, 1])
        weights = softmax(logits).astype(qkv.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, qkv[:, :, 2])
    if attention in ATTENTION:
        q, k, v = (qkv[:, :, i] for i in range(3))
        return jax.nn.dot_product_attention(q, k, v, implementation=attention)
    raise ValueError(f"ViT attention={attention!r}: one of einsum, {ATTENTION}.")


class MultiHeadAttention(nn.Module):
    """Self-attention with nn.MultiHeadDotProductAttention's parameters (`query`, `key`,
    `value`: kernel (D, heads, head_dim), bias (heads, head_dim); `out`: kernel (heads,
    head_dim, D), bias (D,)) and math (q / sqrt(head_dim), softmax over keys, in `dtype`).

    q, k and v are one matmul of the (batch * tokens, D) rows with the concatenated kernels,
    the output projection another; heads stay in the token-major layout the matmuls produce.
    `attention`: "einsum" (the two einsums and the softmax, written out: fastest on the CPU)
    or a `jax.nn.dot_product_attention` implementation, "xla" or "cudnn" (fused on a GPU).
    """

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, d = x.shape
        heads, head_dim = self.num_heads, d // self.num_heads
        qkv_shape = (d, heads, head_dim)
        params = [_DenseParams(qkv_shape, 1, name=name)() for name in ("query", "key", "value")]
        out_kernel, out_bias = _DenseParams((heads, head_dim, d), 2, name="out")()
        kernel = jnp.concatenate([k.reshape(d, d) for k, _ in params], axis=1)
        bias = jnp.concatenate([b.reshape(d) for _, b in params])
        rows = x.astype(self.dtype).reshape(n * t, d)
        qkv = rows @ kernel.astype(self.dtype) + bias.astype(self.dtype)
        y = attend(qkv.reshape(n, t, 3, heads, head_dim), self.attention)
        y = y.reshape(n * t, d)
        y = y @ out_kernel.reshape(d, d).astype(self.dtype) + out_bias.astype(self.dtype)
        return y.reshape(n, t, d)


class MlpBlock(nn.Module):
    """Dense -> GELU (tanh) -> Dense, named Dense_0 / Dense_1 as in the checkpoints; both are
    2-D matmuls over the flattened (batch * tokens, D) rows."""

    mlp_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, dropout) -> jax.Array:
        n, t, d = x.shape
        k0, b0 = _DenseParams((d, self.mlp_dim), 1, name="Dense_0")()
        k1, b1 = _DenseParams((self.mlp_dim, d), 1, name="Dense_1")()
        rows = x.astype(self.dtype).reshape(n * t, d)
        y = rows @ k0.astype(self.dtype) + b0.astype(self.dtype)
        y = dropout(gelu(y).reshape(n, t, self.mlp_dim))
        y = y.reshape(n * t, self.mlp_dim) @ k1.astype(self.dtype)
        return (y + b1.astype(self.dtype)).reshape(n, t, d)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)).

    `block_rate` (dropout on the attention output and the MLP's activations) and `path_rate`
    (drop path on both residual branches) are traced rates or None (off). The block draws its
    own dropout keys, so it can be wrapped in `nn.remat` as a whole.
    """

    mlp_dim: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x: jax.Array, block_rate, path_rate) -> jax.Array:
        def dropout(y):
            if block_rate is None:
                return y
            return feature_dropout(y, block_rate, self.make_rng("dropout"))

        def residual(x, y):
            if path_rate is not None:
                y = drop_path(y, path_rate, self.make_rng("dropout"))
            return x + y

        y = LayerNorm(1e-6, self.dtype, name="LayerNorm_0")(x)
        attention = MultiHeadAttention(
            self.num_heads, self.dtype, self.attention, name="MultiHeadDotProductAttention_1"
        )
        y = attention(y)
        x = residual(x, dropout(y))
        y = LayerNorm(1e-6, self.dtype, name="LayerNorm_2")(x)
        y = MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_3")(y, dropout)
        return residual(x, dropout(y))


class Encoder(nn.Module):
    """Position embeddings (module `posembed_input`), the blocks and the final LayerNorm.

    With `remat`, each block's activations are recomputed in the backward pass instead of
    kept (`nn.remat`): less memory for deep or high-resolution ViTs, about one more forward.
    """

    depth: int
    mlp_dim: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x: jax.Array, dropout, block_rate, path_rates) -> jax.Array:
        pos = PositionEmbedding(name="posembed_input")(x)
        x = dropout(x + pos.astype(self.dtype))
        block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.depth):
            block = block_cls(
                self.mlp_dim, self.num_heads, self.dtype, self.attention, name=f"encoderblock_{i}"
            )
            x = block(x, block_rate, None if path_rates is None else path_rates[i])
        return LayerNorm(1e-6, self.dtype, name="encoder_norm")(x)


class PositionEmbedding(nn.Module):
    """The learned (1, tokens, D) position embedding, [CLS] included."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1, x.shape[1], x.shape[2])
        return self.param("pos_embedding", nn.initializers.normal(0.02), shape)


class ViT(nn.Module):
    """ViT with [CLS] pooling: images in [-1, 1] -> logits, or pre-logit features.

    With `num_classes=None` (a backbone for `Classifier`) it returns the penultimate features
    (the normed [CLS] token, through `pre_logits` + tanh when the checkpoint has one); with
    `num_classes` it adds the checkpoint's `head` and returns logits, or the features when
    called with `features=True`. Training-time regularisers take their rates at call time
    (traced; None, the default, turns one off; the Classifier passes them only at training):
    `block_dropout_rate` (after the embeddings, on the attention output and the MLP's hidden
    and output activations, as vision_transformer's `dropout_rate`) and `drop_path_rate`
    (stochastic depth, rising linearly with depth to that rate).
    """

    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    patch_size: int = 16
    num_classes: int | None = None
    representation_size: int | None = None
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # Recompute each block in the backward pass (Encoder).
    attention: str = "einsum"  # MultiHeadAttention's: einsum, or xla / cudnn (GPU).

    @nn.nowrap
    def stages(self) -> list[tuple[str, tuple[str, ...]]]:
        """(stage, parameter-path prefixes) from input to output, e.g. for layer-wise radii
        (methods/self_labeling.py): the embedding (patch embedding, [CLS], position
        embedding), each `Transformer/encoderblock_{i}` its own stage, the final LayerNorm
        with `pre_logits` when present, then `head` when the model has it. A prefix matches
        whole path components (`encoderblock_1` is not a prefix of `encoderblock_10/...`)."""
        stages = [("embedding", ("embedding", "cls", "Transformer/posembed_input"))]
        stages += [
            (f"encoderblock_{i}", (f"Transformer/encoderblock_{i}",)) for i in range(self.depth)
        ]
        pre_logits = ("pre_logits",) if self.representation_size else ()
        stages.append(("encoder_norm", ("Transformer/encoder_norm", *pre_logits)))
        if self.num_classes is not None:
            stages.append(("head", ("head",)))
        return stages

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool = False,
        features: bool = False,
        block_dropout_rate: jax.Array | float | None = None,
        drop_path_rate: jax.Array | float | None = None,
    ) -> jax.Array:
        del train  # No batch statistics; dropout is on exactly when a rate is passed.

        def dropout(y):
            if block_dropout_rate is None:
                return y
            return feature_dropout(y, block_dropout_rate, self.make_rng("dropout"))

        path_rates = None if drop_path_rate is None else depth_rates(drop_path_rate, self.depth)
        p = self.patch_size
        x = nn.Conv(
            self.width, (p, p), (p, p), padding="VALID", dtype=self.dtype, name="embedding"
        )(images.astype(self.dtype))
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (n, 1, 1)), x], axis=1)
        encoder = Encoder(
            *(self.depth, self.mlp_dim, self.num_heads, self.dtype, self.remat, self.attention),
            name="Transformer",
        )
        x = encoder(x, dropout, block_dropout_rate, path_rates)
        x = x[:, 0]
        if self.representation_size:
            x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
        if self.num_classes is None or features:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
