"""Shim for `--config=configs/vit_b16_dropout.py[:arg]` from a clone.

The config is richft_jax/configs/vit_b16_dropout.py;
`--config=vit_b16_dropout[:arg]` works from anywhere.
"""

from richft_jax.configs.vit_b16_dropout import get_config  # noqa: F401
