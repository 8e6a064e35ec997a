"""Shim for `--config=configs/demo.py[:arg]` from a clone.

The config is richft_jax/configs/demo.py;
`--config=demo[:arg]` works from anywhere.
"""

from richft_jax.configs.demo import get_config  # noqa: F401
