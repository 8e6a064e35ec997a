"""Shim for `--config=configs/resnet50_erm.py[:arg]` from a clone.

The config is richft_jax/configs/resnet50_erm.py;
`--config=resnet50_erm[:arg]` works from anywhere.
"""

from richft_jax.configs.resnet50_erm import get_config  # noqa: F401
