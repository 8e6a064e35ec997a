"""Shim for `--config=configs/mnist_family_demo.py[:arg]` from a clone.

The config is richft_jax/configs/mnist_family_demo.py;
`--config=mnist_family_demo[:arg]` works from anywhere.
"""

from richft_jax.configs.mnist_family_demo import get_config  # noqa: F401
