"""Shim for `--config=configs/combine.py[:arg]` from a clone.

The config is richft_jax/configs/combine.py;
`--config=combine[:arg]` works from anywhere.
"""

from richft_jax.configs.combine import get_config  # noqa: F401
