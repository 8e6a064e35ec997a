"""ResNet-18/50/101 in torchvision's layout (He et al. 2016; v1.5: stride on the 3x3 conv).

Module names follow torchvision's state_dict with "." between a stage and its block index
replaced by "_" (`layer1_0/conv1`, `layer1_0/downsample_0`, `fc`), so torchvision and timm
weights map by a fixed rename (models/pretrained.py). NHWC; explicit symmetric padding
(Flax's 'SAME' pads stride-2 convolutions asymmetrically and would not match torch); BatchNorm
with torch's eps 1e-5 and momentum 0.1 (Flax 0.9). Inputs are ImageNet mean/std normalised.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# name -> (block kind, blocks per stage)
VARIANTS = {
    "resnet18": {"block": "basic", "stage_sizes": (2, 2, 2, 2)},
    "resnet50": {"block": "bottleneck", "stage_sizes": (3, 4, 6, 3)},
    "resnet101": {"block": "bottleneck", "stage_sizes": (3, 4, 23, 3)},
}
EXPANSION = {"basic": 1, "bottleneck": 4}


CONV_IMPLS = ("xla", "im2col", "dot1x1")


def im2col_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.conv_general_dilated` for NHWC x HWIO as one matmul over im2col patches.

    The kh*kw shifted (strided) windows of the padded input are concatenated on the feature
    axis in the kernel's (kh, kw, in) order and contracted with the kernel reshaped to
    (kh*kw*in, out); a 1x1 convolution is a plain matmul. Forward and both backward passes then
    run as matmuls (pad / slice / concatenate around them) instead of XLA CPU's Eigen
    convolutions and the layout transposes around its backward convolutions. Same values up to
    float summation order. Anything else (dilation, groups, string padding, other layouts)
    falls back to `lax.conv_general_dilated`. A drop-in for `nn.Conv(conv_general_dilated=)`.
    """
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    plain = (
        lhs.ndim == 4
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    kh, kw, cin, cout = rhs.shape
    sh, sw = window_strides
    (pt, pb), (pl, pr) = padding
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt or pb or pl or pr else lhs
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [
        lax.slice(
            x, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, cin), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return lax.dot_general(
        patches,
        rhs.reshape(kh * kw * cin, cout),
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _conv(
    features: int, kernel: int, stride: int, dtype: jnp.dtype, name: str, impl: str = "xla"
) -> nn.Conv:
    """Bias-free conv with torch's symmetric padding kernel // 2; `impl` (CONV_IMPLS): XLA's
    convolution, `im2col_conv` for all, or for the 1x1 convolutions only ("dot1x1"); the same
    parameters either way (`kernel` of shape (k, k, in, out))."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"ResNet conv_impl={impl!r} is not one of {CONV_IMPLS}.")
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=[(pad, pad), (pad, pad)],
        use_bias=False,
        dtype=dtype,
        conv_general_dilated=im2col_conv
        if impl == "im2col" or (impl == "dot1x1" and kernel == 1)
        else None,
        name=name,
    )


def _bn(train: bool, dtype: jnp.dtype, name: str) -> nn.BatchNorm:
    """BatchNorm with torch's defaults; running statistics update only when `train`."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class Block(nn.Module):
    """torchvision's BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    width: int
    stride: int
    kind: str = "bottleneck"
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out_features = self.width * EXPANSION[self.kind]
        if self.kind == "basic":
            y = nn.relu(
                _bn(train, self.dtype, "bn1")(
                    _conv(self.width, 3, self.stride, self.dtype, "conv1", self.conv_impl)(x)
                )
            )
            y = _bn(train, self.dtype, "bn2")(
                _conv(self.width, 3, 1, self.dtype, "conv2", self.conv_impl)(y)
            )
        else:
            y = nn.relu(
                _bn(train, self.dtype, "bn1")(
                    _conv(self.width, 1, 1, self.dtype, "conv1", self.conv_impl)(x)
                )
            )
            y = nn.relu(
                _bn(train, self.dtype, "bn2")(
                    _conv(self.width, 3, self.stride, self.dtype, "conv2", self.conv_impl)(y)
                )
            )
            y = _bn(train, self.dtype, "bn3")(
                _conv(out_features, 1, 1, self.dtype, "conv3", self.conv_impl)(y)
            )
        if self.stride != 1 or x.shape[-1] != out_features:
            x = _conv(out_features, 1, self.stride, self.dtype, "downsample_0", self.conv_impl)(x)
            x = _bn(train, self.dtype, "downsample_1")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool.

    With `num_classes=None` (a backbone for `Classifier`) it returns the pooled penultimate
    features (2048-d for ResNet-50); with `num_classes` it adds torchvision's `fc` and returns
    logits, or the features when called with `features=True`. `width` scales every stage
    (64 for the published models; smaller only for tests).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block: str = "bottleneck"
    width: int = 64
    num_classes: int | None = None
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "xla"  # CONV_IMPLS: XLA's convolutions, or im2col_conv's matmuls.

    @nn.nowrap
    def stages(self) -> list[tuple[str, tuple[str, ...]]]:
        """(stage, parameter-path prefixes) from input to output, e.g. for layer-wise radii
        (methods/self_labeling.py): the stem (`conv1`, `bn1`), `layer1`..`layer4` (their
        blocks), then `fc` when the model has it. A prefix matches whole path components."""
        stages = [("stem", ("conv1", "bn1"))]
        for i, n in enumerate(self.stage_sizes):
            if n:
                stages.append((f"layer{i + 1}", tuple(f"layer{i + 1}_{j}" for j in range(n))))
        if self.num_classes is not None:
            stages.append(("fc", ("fc",)))
        return stages

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False, features: bool = False):
        if self.block not in EXPANSION:
            raise ValueError(f"ResNet block={self.block!r} is not one of {sorted(EXPANSION)}.")
        x = _conv(self.width, 7, 2, self.dtype, "conv1", self.conv_impl)(images.astype(self.dtype))
        x = nn.relu(_bn(train, self.dtype, "bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                x = Block(
                    self.width * 2**i,
                    stride,
                    self.block,
                    self.dtype,
                    self.conv_impl,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes is None or features:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)
