"""Shim for `--config=configs/demo_rsl.py[:arg]` from a clone.

The config is richft_jax/configs/demo_rsl.py;
`--config=demo_rsl[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_rsl import get_config  # noqa: F401
