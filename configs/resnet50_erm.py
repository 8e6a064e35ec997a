"""ERM fine-tuning of ResNet-50 (the paper's baseline row): `resnet50_dropout.py` with rate 0.

  python -m richft_jax.main --config=configs/resnet50_erm.py:dataset=pacs,test_domain=0 \
      --workdir=/tmp/r50_erm_pacs_0 --config.pretrained.path=/path/to/resnet50.safetensors
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    arg = ",".join(filter(None, [arg, "erm"]))
    return config_lib.load_config_file("configs/resnet50_dropout.py", arg)
