"""Shim for `--config=configs/vit_b16_erm.py[:arg]` from a clone.

The config is richft_jax/configs/vit_b16_erm.py;
`--config=vit_b16_erm[:arg]` works from anywhere.
"""

from richft_jax.configs.vit_b16_erm import get_config  # noqa: F401
