"""The demo from scratch: the same digits domains, model and schedule, no pretrained backbone.

The contrast of the paper's appendix: very large dropout helps fine-tuning a pretrained network
but hurts training one from random initialisation. Differences from `demo`, and why:
- no pretrained backbone (`pretrained.path` and `pretrained.pretrain_config` None): the whole
  network starts from its random init (run.init_variables loads nothing) and nothing is
  pretrained on first use, not even at the tiny size;
- BatchNorm trained (`model.freeze_bn=False`): its running statistics are learned here, as
  in any from-scratch training (frozen, they would stay at their init: mean 0, variance 1);
- every layer at the demo's head learning rate, 3e-2 (`optim.lr=3e-2`, `head_lr_factor=1`):
  all are new, none is a pretrained one to move slowly; at the demo's 3e-3 a from-scratch ERM
  run underfits (300-step check, test domain syn, seed 0, step 150: ID 62.4%, OOD 11.7%;
  at 3e-2: ID 85.3%, OOD 20.3%);
- methods recorded as `erm_scratch` / `very_large_dropout_scratch` (`method`): the report
  keeps these runs in rows of their own and draws them as the rate curve's from-scratch
  curve, never selecting between a pretrained and a from-scratch run as between settings.
Everything else (data, widths, steps, schedule, evaluation) is the demo's.

  python -m richft_jax.main --config=demo_scratch --workdir=/tmp/demo_scratch   # rate 0.9
  python -m richft_jax.main --config=demo_scratch:erm --workdir=/tmp/scratch_erm  # rate 0
  bash launch/rate_curve.sh   # the rate curve, pretrained and from scratch

Args: `tiny` (as `demo`'s), `erm` (dropout rate 0, config_name "demo_scratch_erm").
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import demo

ARGS = {**demo.ARGS, "erm": False}
SUFFIX = "_scratch"  # Of the methods' names: "erm_scratch", "very_large_dropout_scratch".


def build(tiny: bool = False, erm: bool = False) -> ml_collections.ConfigDict:
    """The demo (tiny or not) from random initialisation with BatchNorm trained; `erm`: rate 0."""
    c = demo.build(tiny=tiny)
    c.config_name = "demo_scratch" + ("_erm" if erm else "") + ("_tiny" if tiny else "")
    if erm:
        c.dropout_rate = 0.0
    c.method = method(c.dropout_rate)
    c.pretrained.path = None
    c.pretrained.pretrain_config = None
    c.model.freeze_bn = False
    c.optim.lr = 3e-2  # The demo's head learning rate (3e-3 × 10), for every layer.
    c.optim.head_lr_factor = 1.0
    return c


def method(dropout_rate: float) -> str:
    """The results' method name of training from scratch with penultimate dropout at this rate."""
    return demo.method(dropout_rate) + SUFFIX


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
