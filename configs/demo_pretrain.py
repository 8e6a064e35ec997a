"""Shim for `--config=configs/demo_pretrain.py[:arg]` from a clone.

The config is richft_jax/configs/demo_pretrain.py;
`--config=demo_pretrain[:arg]` works from anywhere.
"""

from richft_jax.configs.demo_pretrain import get_config  # noqa: F401
