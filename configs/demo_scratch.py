"""Shim for `--config=configs/demo_scratch.py[:arg]` from a clone.

The config is richft_jax/configs/demo_scratch.py;
`--config=demo_scratch[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_scratch import get_config  # noqa: F401
