"""Pretrains the embedded demo's backbone on font-rendered letters (52 classes).

No weights can be downloaded, so the demo makes its own "pretrained network": a small
ResNet trained on letters, whose classes are disjoint from the digits it is later
fine-tuned on. `configs/demo.py` runs this once, automatically, when its checkpoint
is missing. By hand:

  python -m richft_jax.main --config=configs/demo_pretrain.py \
      --workdir=~/.cache/richft_jax/demo_pretrain_small_resnet
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    c = config_lib.base_config()
    c.task = "pretrain"
    c.config_name = "demo_pretrain"
    c.method = "pretrain"
    c.data.name = "letters"
    c.data.test_domains = "test"  # Train on the "train" split, report the held-out "test".
    c.data.batch_size_per_domain = 128
    c.data.augment = "crop"
    c.data.eval_max_examples = 2000  # Bound evaluation cost on the 36k-image train split.
    c.model.name = "small_resnet"
    c.model.kwargs.widths = (16, 32, 64, 128)
    c.model.kwargs.blocks = (1, 1, 1, 1)
    c.model.kwargs.stem_stride = 2  # 16x16 maps from the stem: 4x cheaper, as accurate here.
    c.model.kwargs.feature_dim = 512  # Widened penultimate layer: room for 90% dropout.
    c.model.freeze_bn = False  # Pretraining learns the BatchNorm statistics.
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 50
    c.num_steps = 1200
    c.log_every = 100
    c.eval_every = 600
    c.checkpoint_every = 300
    if arg == "tiny":  # Seconds-long smoke runs and tests.
        c.config_name = "demo_pretrain_tiny"
        c.model.kwargs.widths = (8, 8, 16, 16)
        c.model.kwargs.feature_dim = 64
        c.data.batch_size_per_domain = 64
        c.data.eval_max_examples = 256
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 30, 10, 30, 30
    elif arg == "vit":
        c.model.name = "small_vit"
        c.model.kwargs = {}
        c.config_name = "demo_pretrain_vit"
    return c
