"""ERM fine-tuning of ResNet-50 (the paper's baseline row): `resnet50_dropout` with rate 0.

  python -m richft_jax.main --config=resnet50_erm:dataset=pacs,test_domain=0 \
      --workdir=/tmp/r50_erm_pacs_0   # --config.pretrained.path=resnet50 (the default)

Args as `resnet50_dropout` but `erm`: `dataset`, `test_domain`, `dry_run`.
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import resnet50_dropout

ARGS = {k: v for k, v in resnet50_dropout.ARGS.items() if k != "erm"}


def build(
    dataset: str = "pacs", test_domain: str = "0", dry_run: bool = False
) -> ml_collections.ConfigDict:
    """`resnet50_dropout` with erm."""
    return resnet50_dropout.build(dataset, test_domain, erm=True, dry_run=dry_run)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
