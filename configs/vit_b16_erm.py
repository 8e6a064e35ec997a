"""ERM fine-tuning of ViT-B/16 (the paper's baseline row): `vit_b16_dropout.py` with rate 0.

  python -m richft_jax.main --config=configs/vit_b16_erm.py:dataset=pacs,test_domain=0 \
      --workdir=/tmp/vit_erm_pacs_0 --config.pretrained.path=/path/to/B_16-i21k-...npz
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    arg = ",".join(filter(None, [arg, "erm"]))
    return config_lib.load_config_file("configs/vit_b16_dropout.py", arg)
