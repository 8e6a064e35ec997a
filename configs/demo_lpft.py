"""Shim: the `demo_lpft` config lives in richft_jax/configs/demo_lpft.py (--config=demo_lpft works anywhere)."""

from richft_jax.configs.demo_lpft import get_config  # noqa: F401
