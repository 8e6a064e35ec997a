"""Late dropout (Liu et al. 2023) on the embedded digits domains.

No dropout for the first half of the steps, then the demo's penultimate dropout at rate 0.9
(`dropout_schedule="late"`, `dropout_cutoff=0.5`). With `vit`, stochastic depth 0.1 (per-block
rate rising linearly with depth) switches on at the same step, Liu et al.'s late-s.d. recipe.

  python -m richft_jax.main --config=configs/demo_late_dropout.py --workdir=/tmp/demo_late

Args as `configs/demo_early_dropout.py`: `tiny`, `vit`, `domainbed[/ARG]`, `domainbed_vit[/ARG]`.
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    early = config_lib.load_config_file("configs/demo_early_dropout.py", arg)
    c = early
    c.config_name = c.config_name.replace("demo_early_dropout", "demo_late_dropout", 1)
    c.method = "late_dropout"
    c.dropout_schedule = "late"
    c.dropout_cutoff = 0.5
    if c.block_dropout_rate > 0:  # The ViT: stochastic depth late, no dropout in the blocks.
        c.block_dropout_rate = 0.0
        c.drop_path_rate = 0.1
    return c
