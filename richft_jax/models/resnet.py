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

from richft_jax.models.layers import Conv, batch_norm, max_pool_3x3_s2

# name -> (block kind, blocks per stage)
VARIANTS = {
    "resnet18": {"block": "basic", "stage_sizes": (2, 2, 2, 2)},
    "resnet50": {"block": "bottleneck", "stage_sizes": (3, 4, 6, 3)},
    "resnet101": {"block": "bottleneck", "stage_sizes": (3, 4, 23, 3)},
}
EXPANSION = {"basic": 1, "bottleneck": 4}


class Block(nn.Module):
    """torchvision's BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    width: int
    stride: int
    kind: str = "bottleneck"
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"  # layers.Conv: where convolutions are matmuls.

    @nn.nowrap
    def conv(self, features: int, kernel: int, stride: int, name: str) -> Conv:
        """A bias-free convolution with torch's padding kernel // 2 (layers.Conv)."""
        return Conv(features, kernel, stride, self.conv_impl, self.dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out_features = self.width * EXPANSION[self.kind]
        bn = lambda name: batch_norm(train, self.dtype, name)  # noqa: E731
        if self.kind == "basic":
            y = nn.relu(bn("bn1")(self.conv(self.width, 3, self.stride, "conv1")(x)))
            y = bn("bn2")(self.conv(self.width, 3, 1, "conv2")(y))
        else:
            y = nn.relu(bn("bn1")(self.conv(self.width, 1, 1, "conv1")(x)))
            y = nn.relu(bn("bn2")(self.conv(self.width, 3, self.stride, "conv2")(y)))
            y = bn("bn3")(self.conv(out_features, 1, 1, "conv3")(y))
        if self.stride != 1 or x.shape[-1] != out_features:
            x = self.conv(out_features, 1, self.stride, "downsample_0")(x)
            x = bn("downsample_1")(x)
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
    # config_checks.CONV_IMPL: "dot" computes the 1x1 convolutions (and any whose window
    # outgrows its output) as matmuls, same parameters and function (layers.Conv); "auto" on a
    # CPU only (1.5x the ResNet-50 train step: XLA's CPU transposes activations around the 1x1
    # convolutions' gradients); "conv" XLA's convolutions everywhere.
    conv_impl: str = "auto"

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
        stem = Conv(self.width, 7, 2, self.conv_impl, self.dtype, name="conv1")
        x = stem(images.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
        x = max_pool_3x3_s2(x)
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                block = Block(
                    *(self.width * 2**i, stride, self.block, self.dtype, self.conv_impl),
                    name=f"layer{i + 1}_{j}",
                )
                x = block(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes is None or features:
            return x.astype(jnp.float32)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)
