"""Shim: the `combine` config lives in richft_jax/configs/combine.py (--config=combine works anywhere)."""

from richft_jax.configs.combine import get_config  # noqa: F401
