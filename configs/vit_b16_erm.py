"""Shim: the `vit_b16_erm` config lives in richft_jax/configs/vit_b16_erm.py (--config=vit_b16_erm works anywhere)."""

from richft_jax.configs.vit_b16_erm import get_config  # noqa: F401
