"""The paper's ViT-B/16 rows: very-large-dropout (0.9) fine-tuning on a DomainBed dataset.

augreg ViT-B/16 (ImageNet-21k; or its 21k->1k file) from the vision_transformer .npz
(models/pretrained.py says where; or its `python -m richft_jax.convert` output), inputs in
[-1, 1], dropout 0.9 on the 768-d [CLS] features; otherwise the ResNet-50 protocol
(configs/resnet50_dropout.py: SGD momentum 0.9, 10,000 steps, x0.1 at 5,000, 32 images per
training domain). Same arguments:

  python -m richft_jax.main --config=configs/vit_b16_dropout.py:dataset=pacs,test_domain=0 \
      --workdir=/tmp/vit_pacs_0 --config.pretrained.path=/path/to/B_16-i21k-...npz
  ... :dataset=pacs,erm   # ERM (also configs/vit_b16_erm.py);  ... ,dry_run   # 3 steps
"""

import os

from richft_jax import config_lib

AUGREG_B16 = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"


def get_config(arg: str | None = None):
    c = config_lib.load_config_file("configs/resnet50_dropout.py", arg)
    c.config_name = c.config_name.replace("resnet50", "vit_b16")
    c.data.normalize = "minus_one_one"  # augreg ViTs take [-1, 1].
    c.model.name = "vit_b16"
    c.model.freeze_bn = False  # No BatchNorm.
    cache = os.environ.get("RICHFT_CACHE", os.path.join("~", ".cache", "richft_jax"))
    c.pretrained.path = os.path.join(cache, AUGREG_B16)
    return c
