"""Shim: the `demo_early_dropout` config lives in richft_jax/configs/demo_early_dropout.py (--config=demo_early_dropout works anywhere)."""

from richft_jax.configs.demo_early_dropout import get_config  # noqa: F401
