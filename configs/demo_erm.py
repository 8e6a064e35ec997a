"""Shim: the `demo_erm` config lives in richft_jax/configs/demo_erm.py (--config=demo_erm works anywhere)."""

from richft_jax.configs.demo_erm import get_config  # noqa: F401
