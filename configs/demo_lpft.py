"""Shim for `--config=configs/demo_lpft.py[:arg]` from a clone.

The config is richft_jax/configs/demo_lpft.py;
`--config=demo_lpft[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_lpft import get_config  # noqa: F401
