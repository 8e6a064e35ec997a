"""Shim for `--config=configs/demo_erm.py[:arg]` from a clone.

The config is richft_jax/configs/demo_erm.py;
`--config=demo_erm[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_erm import get_config  # noqa: F401
