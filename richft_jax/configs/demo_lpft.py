"""LP-FT on the embedded digits domains (Kumar et al. 2022): linear probe, then fine-tuning.

The linear-probe head (logistic regression on the frozen pretrained features, C chosen on the
training domains' out splits) initialises the head; BatchNorm statistics stay frozen. The LP
model itself is evaluated at step 0 and written as method "lp", so one run gives both rows.

  python -m richft_jax.main --config=demo_lpft --workdir=/tmp/demo_lpft

Args as `demo`: `tiny`.
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import demo

ARGS = dict(demo.ARGS)


def build(tiny: bool = False) -> ml_collections.ConfigDict:
    """The demo (tiny or not) without dropout, from the linear-probe head."""
    c = demo.build(tiny=tiny)
    c.config_name = "demo_lpft"
    c.method = "lp_ft"
    c.dropout_rate = 0.0
    c.lp_head = True
    c.optim.head_lr_factor = 1.0  # The head starts trained: no need to rush it.
    c.moving_average_start = None  # The comparison rows need no along-run average.
    c.keep_checkpoints = 2
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
