"""Late dropout (Liu et al. 2023) on the embedded digits domains.

No dropout for the first half of the steps, then the demo's penultimate dropout at rate 0.9
(`dropout_schedule="late"`, `dropout_cutoff=0.5`). With `vit`, stochastic depth 0.1 (per-block
rate rising linearly with depth) switches on at the same step, Liu et al.'s late-s.d. recipe.

  python -m richft_jax.main --config=demo_late_dropout --workdir=/tmp/demo_late

Args as `demo_early_dropout`: `tiny`, `vit`, `base`, `dataset`, `test_domain`, `dry_run`.
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import demo_early_dropout

ARGS = dict(demo_early_dropout.ARGS)


def build(
    tiny: bool = False,
    vit: bool = False,
    base: str = "demo",
    dataset: str = "pacs",
    test_domain: str = "0",
    dry_run: bool = False,
) -> ml_collections.ConfigDict:
    """Late dropout (and, on a ViT, late stochastic depth) on the early-dropout config's base."""
    c = demo_early_dropout.build(tiny, vit, base, dataset, test_domain, dry_run)
    if base == "demo":
        c.config_name = "demo_late_dropout" + ("_tiny" if tiny else "")
    c.method = "late_dropout"
    c.dropout_schedule = "late"
    c.dropout_cutoff = 0.5
    if c.block_dropout_rate > 0:  # A ViT: stochastic depth late, no dropout in the blocks.
        c.block_dropout_rate = 0.0
        c.drop_path_rate = 0.1
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
