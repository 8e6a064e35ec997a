"""Shim: the `resnet50_dropout` config lives in richft_jax/configs/resnet50_dropout.py (--config=resnet50_dropout works anywhere)."""

from richft_jax.configs.resnet50_dropout import get_config  # noqa: F401
