"""Shim: the `vit_b16_dropout` config lives in richft_jax/configs/vit_b16_dropout.py (--config=vit_b16_dropout works anywhere)."""

from richft_jax.configs.vit_b16_dropout import get_config  # noqa: F401
