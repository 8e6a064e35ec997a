"""Builds a classifier from `config.model`: backbones are chosen by name.

The backbones' names and the block-dropout rates each takes are config_checks.BACKBONE_RATES
(the config checks read it before JAX is imported); `check_backbone_rates` holds BACKBONES to
it at import, so a backbone missing there, or described wrongly, fails at once.
"""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from richft_jax import config_checks
from richft_jax.models import demo, resnet, vit
from richft_jax.models.classifier import Classifier


def variant(name: str, base: type[nn.Module], preset: dict) -> type[nn.Module]:
    """A subclass of `base` whose field defaults are `preset` (kwargs still override), so
    the registry entry is a class with the base's call signature."""
    annotations = {k: base.__annotations__[k] for k in preset}
    return type(name, (base,), {"__annotations__": annotations, "__module__": __name__, **preset})


def model_builders() -> dict[str, type[nn.Module]]:
    """Registry entries for the real-scale backbones (variants preset, kwargs override)."""
    variants = {n: (vit.ViT, v) for n, v in vit.VARIANTS.items()}
    variants.update({n: (resnet.ResNet, v) for n, v in resnet.VARIANTS.items()})
    return {n: variant(n, base, preset) for n, (base, preset) in variants.items()}


BACKBONES = {
    "small_resnet": demo.SmallResNet,
    "small_vit": demo.SmallViT,
    # Real scale, laid out as their published checkpoints (models/vit.py, models/resnet.py;
    # weights read by models/pretrained.py): vit_s16, vit_b16, vit_l16, resnet18, resnet50,
    # resnet101.
    **model_builders(),
}


def block_rates(backbone: type[nn.Module]) -> tuple[str, ...]:
    """The config_checks.BLOCK_RATES that the backbone's __call__ takes."""
    call = inspect.signature(backbone.__call__).parameters
    return tuple(r for r in config_checks.BLOCK_RATES if r in call)


def check_backbone_rates(backbones: dict[str, type[nn.Module]]) -> None:
    """Raises a ValueError naming each backbone that config_checks.BACKBONE_RATES lacks, lists
    without a class, or gives other block-dropout rates than its __call__ takes."""
    what = (
        "models.registry.BACKBONES and config_checks.BACKBONE_RATES (the backbones and the "
        "block-dropout rates each takes)"
    )
    config_checks.check_table(what, backbones, config_checks.BACKBONE_RATES, block_rates)


check_backbone_rates(BACKBONES)


def compute_dtype(name: str, backend: str | None = None) -> jnp.dtype:
    """config.model.dtype as a dtype; "auto" is bfloat16 on GPU/TPU and float32 on CPU.

    It is the dtype of activations and matmul/convolution inputs only: parameters, optimizer
    state and logits stay float32 (the classifier casts its logits back).
    """
    if name == "auto":
        backend = backend or jax.default_backend()
        return jnp.dtype(jnp.bfloat16 if backend in ("gpu", "cuda", "rocm", "tpu") else jnp.float32)
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(
            f"config.model.dtype: {name!r} is not one of auto, float32, bfloat16, float16."
        )
    return jnp.dtype(name)


def build_backbone(name: str, dtype: str = "auto", **kwargs) -> nn.Module:
    """The backbone module registered under `name`, computing in `compute_dtype(dtype)`."""
    if name not in BACKBONES:
        raise ValueError(
            f"config.model.name: unknown backbone {name!r}; known: {sorted(BACKBONES)}."
        )
    # Lists (a config.json's arrays) as tuples, as the configs write them: a restored run's
    # model then has the same repr (steps.jit_per_model's key) and hash as a fresh one.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return BACKBONES[name](dtype=compute_dtype(dtype), **kwargs)


def build_classifier(model_config: ml_collections.ConfigDict, num_classes: int) -> Classifier:
    """Backbone + feature dropout + linear head, as configured."""
    backbone = build_backbone(
        model_config.name, model_config.get("dtype", "auto"), **model_config.get("kwargs", {})
    )
    return Classifier(
        backbone,
        num_classes,
        freeze_bn=model_config.freeze_bn,
        head_zero_init=model_config.head_zero_init,
    )
