"""ERM fine-tuning of ViT-B/16 (the paper's baseline row): `vit_b16_dropout` with rate 0.

  python -m richft_jax.main --config=vit_b16_erm:dataset=pacs,test_domain=0 \
      --workdir=/tmp/vit_erm_pacs_0   # --config.pretrained.path=vit_b16 (the default)

Args as `vit_b16_dropout` but `erm`: `dataset`, `test_domain`, `dry_run`.
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import resnet50_erm, vit_b16_dropout

ARGS = dict(resnet50_erm.ARGS)


def build(
    dataset: str = "pacs", test_domain: str = "0", dry_run: bool = False
) -> ml_collections.ConfigDict:
    """`vit_b16_dropout` with erm."""
    return vit_b16_dropout.build(dataset, test_domain, erm=True, dry_run=dry_run)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
