"""Early dropout (Liu et al. 2023, "Dropout reduces underfitting") on the embedded digits domains.

The demo's penultimate dropout at rate 0.9 for the first quarter of the steps, then none
(`dropout_schedule="early"`, `dropout_cutoff=0.25`; `early_linear` decays it to 0 instead).
The rate is an argument of the jitted step: the schedule never recompiles it.

  python -m richft_jax.main --config=demo_early_dropout --workdir=/tmp/demo_early
  python -m richft_jax.main --config=demo_early_dropout:base=resnet50,dataset=pacs,test_domain=2 ...

Args: `tiny`; `vit` (the small ViT, with dropout 0.1 inside its blocks on the same schedule, as
Liu et al.'s early-dropout recipe); `base=resnet50` / `base=vit_b16` (the paper's DomainBed
config with this schedule, with its `dataset`, `test_domain`, `dry_run`).
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import _method_base, demo_pretrain

ARGS = {**_method_base.ARGS, "vit": False}


def build(
    tiny: bool = False,
    vit: bool = False,
    base: str = "demo",
    dataset: str = "pacs",
    test_domain: str = "0",
    dry_run: bool = False,
) -> ml_collections.ConfigDict:
    """Early dropout on the demo (its ResNet, or the small ViT) or on a paper config."""
    c = _method_base.method_base(tiny, base, dataset, test_domain, dry_run)
    if base == "demo":
        c.config_name = "demo_early_dropout" + ("_tiny" if tiny else "")
    elif vit:
        raise ValueError("config argument vit: only with base=demo (else base=vit_b16).")
    if vit:
        c.model.name = "small_vit"
        c.model.kwargs = dict(demo_pretrain.TINY_VIT) if tiny else {}
        # The tiny ViT has no pretrained checkpoint: it trains from its init (tests only).
        c.pretrained.path = None if tiny else config_lib.cache_path("demo_pretrain_small_vit")
        c.pretrained.pretrain_config = None if tiny else "demo_pretrain:vit"
    c.method = "early_dropout"
    c.dropout_rate = 0.9
    c.dropout_schedule = "early"
    c.dropout_cutoff = 0.25
    if vit or base == "vit_b16":
        c.block_dropout_rate = 0.1
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
