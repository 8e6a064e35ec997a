"""Shim: the `resnet50_erm` config lives in richft_jax/configs/resnet50_erm.py (--config=resnet50_erm works anywhere)."""

from richft_jax.configs.resnet50_erm import get_config  # noqa: F401
