"""Shim: the `demo_rsl` config lives in richft_jax/configs/demo_rsl.py (--config=demo_rsl works anywhere)."""

from richft_jax.configs.demo_rsl import get_config  # noqa: F401
