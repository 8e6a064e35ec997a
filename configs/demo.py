"""Shim: the `demo` config lives in richft_jax/configs/demo.py (--config=demo works anywhere)."""

from richft_jax.configs.demo import get_config  # noqa: F401
