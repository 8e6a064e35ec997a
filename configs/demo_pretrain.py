"""Shim: the `demo_pretrain` config lives in richft_jax/configs/demo_pretrain.py (--config=demo_pretrain works anywhere)."""

from richft_jax.configs.demo_pretrain import get_config  # noqa: F401
