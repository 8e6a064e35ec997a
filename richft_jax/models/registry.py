"""Builds a classifier from `config.model`: backbones are chosen by name."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from richft_jax.models import demo, pretrained
from richft_jax.models.classifier import Classifier

BACKBONES = {
    "small_resnet": demo.SmallResNet,
    "small_vit": demo.SmallViT,
    # Real scale, laid out as their published checkpoints (models/vit.py, models/resnet.py):
    # vit_s16, vit_b16, vit_l16, resnet18, resnet50, resnet101.
    **pretrained.model_builders(),
}


def build_backbone(name: str, dtype: str = "float32", **kwargs) -> nn.Module:
    """The backbone module registered under `name`."""
    if name not in BACKBONES:
        raise ValueError(
            f"config.model.name: unknown backbone {name!r}; known: {sorted(BACKBONES)}."
        )
    return BACKBONES[name](dtype=jnp.dtype(dtype), **kwargs)


def build_classifier(model_config: ml_collections.ConfigDict, num_classes: int) -> Classifier:
    """Backbone + feature dropout + linear head, as configured."""
    backbone = build_backbone(
        model_config.name, model_config.get("dtype", "float32"), **model_config.get("kwargs", {})
    )
    return Classifier(
        backbone,
        num_classes,
        freeze_bn=model_config.freeze_bn,
        head_zero_init=model_config.head_zero_init,
    )
