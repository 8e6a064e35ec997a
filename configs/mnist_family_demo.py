"""Shim: the `mnist_family_demo` config lives in richft_jax/configs/mnist_family_demo.py (--config=mnist_family_demo works anywhere)."""

from richft_jax.configs.mnist_family_demo import get_config  # noqa: F401
