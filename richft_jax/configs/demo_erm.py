"""ERM fine-tuning on the embedded digits domains: the demo config with dropout 0.

  python -m richft_jax.main --config=demo_erm --workdir=/tmp/demo_erm

Args as `demo`: `tiny`.
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import demo

ARGS = dict(demo.ARGS)


def build(tiny: bool = False) -> ml_collections.ConfigDict:
    """The demo (tiny or not) with dropout 0; its config_name is "demo_erm" at both sizes."""
    c = demo.build(tiny=tiny)
    c.config_name = "demo_erm"
    c.dropout_rate = 0.0
    c.method = demo.method(c.dropout_rate)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
