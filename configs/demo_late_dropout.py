"""Shim for `--config=configs/demo_late_dropout.py[:arg]` from a clone.

The config is richft_jax/configs/demo_late_dropout.py;
`--config=demo_late_dropout[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_late_dropout import get_config  # noqa: F401
