"""The paper's ResNet-50 rows: very-large-dropout (0.9) fine-tuning on a DomainBed dataset.

torchvision ResNet-50 IMAGENET1K_V2 ("ResNet #2"; V1 is "#1") from a .safetensors file with
torchvision's names (models/pretrained.py says where; or its `python -m richft_jax.convert`
output), BatchNorm statistics frozen, SGD momentum 0.9, 10,000 steps with lr x0.1 at 5,000,
32 images per training domain, dropout 0.9 on the 2048-d pooled features, evaluation every
300 steps. The argument picks dataset, test domain and variant (comma-separated):

  python -m richft_jax.main --config=configs/resnet50_dropout.py:dataset=pacs,test_domain=0 \
      --workdir=/tmp/r50_pacs_0 --config.pretrained.path=/path/to/resnet50.tv2_in1k.safetensors
  python -m richft_jax.main --config=configs/resnet50_dropout.py:dataset=vlcs,erm ...   # ERM
  ... :dataset=pacs,dry_run   # 3 steps on at most 64 images per split: checks a setup end to end

Grid of the paper (3 seeds): --config.optim.lr in {1e-3, 5e-4},
--config.optim.weight_decay in {1e-4, 5e-5, 1e-5}, --config.seed in {0, 1, 2}; DomainNet:
30,000 steps, lr in {3e-3, 5e-3}, x0.1 at 15k and 25k (set by dataset=domainnet).
"""

import os

import ml_collections

from richft_jax import config_lib

CACHE = os.environ.get("RICHFT_CACHE", os.path.join("~", ".cache", "richft_jax"))
DATASETS = ("pacs", "vlcs", "office_home", "terra_incognita", "domainnet")


def parse_arg(arg: str | None) -> dict:
    """Parses `dataset=pacs,test_domain=0,erm,dry_run` (keys with values, then flags)."""
    out = {"dataset": "pacs", "test_domain": "0", "erm": False, "dry_run": False}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if key not in out or (eq and isinstance(out[key], bool)):
            raise ValueError(f"config argument {item!r}: expected keys {sorted(out)}.")
        out[key] = value if eq else True
    return out


def paper_config(backbone: str, arg: str | None) -> ml_collections.ConfigDict:
    """The paper's fine-tuning protocol shared by the ResNet-50 and ViT-B/16 configs."""
    a = parse_arg(arg)
    c = config_lib.base_config()
    c.config_name = f"{backbone}_{'erm' if a['erm'] else 'dropout'}"
    c.method = "erm" if a["erm"] else "very_large_dropout"
    c.dropout_rate = 0.0 if a["erm"] else 0.9
    c.data.name = a["dataset"]
    c.data.test_domains = a["test_domain"]
    c.data.batch_size_per_domain = 32
    c.data.augment = "domainbed"  # RandomResizedCrop(224, 0.7-1), flip, jitter 0.3, gray 0.1.
    c.data.image_size = 224  # Images resized at load (DomainBed's 224 x 224).
    c.data.eval_batch_size = 256
    c.optim.name = "sgd"
    c.optim.lr = 1e-3  # Grid: {1e-3, 5e-4}.
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4  # Grid: {1e-4, 5e-5, 1e-5}.
    c.optim.head_lr_factor = 1.0  # 10 in one of the paper's figures.
    c.optim.schedule = "step"
    c.optim.decay_at = (0.5,)
    c.optim.decay_factor = 0.1
    c.num_steps = 10_000
    c.eval_every = c.checkpoint_every = 300
    c.log_every = 50
    if a["dataset"] == "domainnet":
        c.num_steps = 30_000
        c.optim.lr = 3e-3  # Grid: {3e-3, 5e-3}.
        c.optim.decay_at = (0.5, 25_000 / 30_000)
        c.eval_every = c.checkpoint_every = 1000
    if a["dry_run"]:
        c.config_name += "_dry_run"
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 3, 1, 3, 3
        c.data.eval_max_examples = 64
    return c


def get_config(arg: str | None = None):
    c = paper_config("resnet50", arg)
    c.data.normalize = "imagenet"  # torchvision's mean/std.
    c.model.name = "resnet50"
    c.model.freeze_bn = True  # Running statistics frozen (eval mode), affine params trained.
    c.pretrained.path = os.path.join(CACHE, "resnet50.tv2_in1k.safetensors")
    return c
