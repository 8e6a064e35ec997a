"""Shim for `--config=configs/demo_early_dropout.py[:arg]` from a clone.

The config is richft_jax/configs/demo_early_dropout.py;
`--config=demo_early_dropout[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_early_dropout import get_config  # noqa: F401
