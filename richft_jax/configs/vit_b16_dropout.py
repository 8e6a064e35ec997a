"""The paper's ViT-B/16 rows: very-large-dropout (0.9) fine-tuning on a DomainBed dataset.

augreg ViT-B/16 (ImageNet-21k), by its registered name `vit_b16` (models/hub.py: the
vision_transformer .npz, downloaded once into $RICHFT_CACHE/weights; `vit_b16_i1k`: its 21k->1k
file; or a local file or its `python -m richft_jax.convert` output), inputs in
[-1, 1], dropout 0.9 on the 768-d [CLS] features; otherwise the ResNet-50 protocol
(`resnet50_dropout`: SGD momentum 0.9, 32 images per training domain, trainv2.py's schedule:
10,001 updates labelled 0, 300, ..., 10000, x0.1 from label 5,000; training domains evaluated
augmented). Same arguments (`dataset`, `test_domain`, `erm`, `dry_run`):

  python -m richft_jax.main --config=vit_b16_dropout:dataset=pacs,test_domain=0 \
      --workdir=/tmp/vit_pacs_0   # --config.pretrained.path=vit_b16 (the default)
  ... :dataset=pacs,erm   # ERM (also vit_b16_erm);  ... ,dry_run   # 3 steps

What to expect. A reference point for scale only, from another backbone and protocol (ResNet-50
with torchvision's v1 ImageNet-1k weights, 5,000 steps, a hyper-parameter search; DomainBed /
SWAD / DiWA papers, training-domain validation): ERM gets PACS 85.5, VLCS 77.5, OfficeHome 66.5,
TerraIncognita 46.1, DomainNet 40.9 (avg 63.3). The paper's claim, as for ResNet-50: above ERM
(`vit_b16_erm`) out of distribution by a few points on average. Our measured numbers: none yet
at this scale (no GPU/TPU run has been made); the embedded benchmark's are in docs/results.md.
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import resnet50_dropout

ARGS = dict(resnet50_dropout.ARGS)


def build(
    dataset: str = "pacs", test_domain: str = "0", erm: bool = False, dry_run: bool = False
) -> ml_collections.ConfigDict:
    """The paper's ViT-B/16 row on `dataset`, leaving out `test_domain`."""
    c = resnet50_dropout.paper_config("vit_b16", dataset, test_domain, erm, dry_run)
    c.data.normalize = "minus_one_one"  # augreg ViTs take [-1, 1].
    c.model.name = "vit_b16"
    c.model.freeze_bn = False  # No BatchNorm.
    # Speed and memory switches of the ViT (same parameters and function), on the command line
    # as --config.model.kwargs.remat=True / --config.model.kwargs.attention=cudnn:
    c.model.kwargs.remat = False  # Recompute each block in the backward pass: less memory.
    c.model.kwargs.attention = "einsum"  # cudnn: jax.nn.dot_product_attention's fused GPU kernel.
    c.pretrained.path = "vit_b16"  # Registered name: downloaded once (models/hub.py).
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
