"""ERM fine-tuning of ResNet-50 (the paper's baseline row): `resnet50_dropout` with rate 0.

  python -m richft_jax.main --config=resnet50_erm:dataset=pacs,test_domain=0 \
      --workdir=/tmp/r50_erm_pacs_0   # --config.pretrained.path=resnet50 (the default)

Args as `resnet50_dropout` but `erm`: `dataset`, `test_domain`, `dry_run`.

What to expect. A reference point from another protocol (torchvision's v1 ImageNet-1k weights,
5,000 steps, a hyper-parameter search; DomainBed / SWAD / DiWA papers, training-domain
validation): ERM ResNet-50 gets PACS 85.5, VLCS 77.5, OfficeHome 66.5, TerraIncognita 46.1,
DomainNet 40.9 (avg 63.3). In the paper this config is the baseline, which very-large dropout
(`resnet50_dropout`) beats out of distribution by a few points on average. Our measured
numbers: none yet at this scale (no GPU/TPU run has been made); the embedded benchmark's are in
docs/results.md.
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
