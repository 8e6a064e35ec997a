"""The classifier every method trains: backbone -> feature dropout -> new linear head."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from richft_jax.models.layers import feature_dropout


class Classifier(nn.Module):
    """Backbone features, inverted dropout on them at train time, then a linear head.

    Returns (logits, {"features": penultimate features before dropout}). BatchNorm in
    the backbone updates its running statistics only when `train and not freeze_bn`:
    fine-tuning keeps the pretrained statistics (eval mode) and trains the affine
    parameters, as the paper does.
    """

    backbone: nn.Module
    num_classes: int
    freeze_bn: bool = False
    head_zero_init: bool = False

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool,
        dropout_rate: jax.Array | float = 0.0,
        backbone_rates: dict[str, jax.Array | float] | None = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        # backbone_rates: rates of the backbone's own regularisers at training (e.g. the ViT's
        # block_dropout_rate / drop_path_rate), passed through as keyword arguments.
        extra = backbone_rates if train and backbone_rates else {}
        features = self.backbone(images, train=train and not self.freeze_bn, **extra)
        x = features
        if train:
            x = feature_dropout(x, dropout_rate, self.make_rng("dropout"))
        kernel_init = (
            nn.initializers.zeros if self.head_zero_init else nn.linear.default_kernel_init
        )
        logits = nn.Dense(self.num_classes, kernel_init=kernel_init, name="head")(x)
        return logits.astype(jnp.float32), {"features": features}
