"""Shim: the `demo_late_dropout` config lives in richft_jax/configs/demo_late_dropout.py (--config=demo_late_dropout works anywhere)."""

from richft_jax.configs.demo_late_dropout import get_config  # noqa: F401
