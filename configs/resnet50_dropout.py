"""Shim for `--config=configs/resnet50_dropout.py[:arg]` from a clone.

The config is richft_jax/configs/resnet50_dropout.py;
`--config=resnet50_dropout[:arg]` works from anywhere.
"""

from richft_jax.configs.resnet50_dropout import get_config  # noqa: F401
