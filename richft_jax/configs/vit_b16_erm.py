"""ERM fine-tuning of ViT-B/16 (the paper's baseline row): `vit_b16_dropout` with rate 0.

  python -m richft_jax.main --config=vit_b16_erm:dataset=pacs,test_domain=0 \
      --workdir=/tmp/vit_erm_pacs_0   # --config.pretrained.path=vit_b16 (the default)

Args as `vit_b16_dropout` but `erm`: `dataset`, `test_domain`, `dry_run`.

What to expect. A reference point for scale only, from another backbone and protocol (ResNet-50
with torchvision's v1 ImageNet-1k weights, 5,000 steps, a hyper-parameter search; DomainBed /
SWAD / DiWA papers, training-domain validation): ERM gets PACS 85.5, VLCS 77.5, OfficeHome 66.5,
TerraIncognita 46.1, DomainNet 40.9 (avg 63.3). In the paper this config is the baseline, which
very-large dropout (`vit_b16_dropout`) beats out of distribution by a few points on average.
Our measured numbers: none yet at this scale (no GPU/TPU run has been made); the embedded
benchmark's are in docs/results.md.
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
