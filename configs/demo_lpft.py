"""LP-FT on the embedded digits domains (Kumar et al. 2022): linear probe, then fine-tuning.

The linear-probe head (logistic regression on the frozen pretrained features, C chosen on the
training domains' out splits) initialises the head; BatchNorm statistics stay frozen. The LP
model itself is evaluated at step 0 and written as method "lp", so one run gives both rows.

  python -m richft_jax.main --config=configs/demo_lpft.py --workdir=/tmp/demo_lpft
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    c = config_lib.load_config_file("configs/demo.py", arg)
    c.config_name = "demo_lpft"
    c.method = "lp_ft"
    c.dropout_rate = 0.0
    c.lp_head = True
    c.optim.head_lr_factor = 1.0  # The head starts trained: no need to rush it.
    c.moving_average_start = None  # The comparison rows need no along-run average.
    c.keep_checkpoints = 2
    return c
