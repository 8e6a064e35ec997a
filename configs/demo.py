"""The embedded default: very-large-dropout fine-tuning on the digits domains.

Fine-tunes the letters-pretrained small ResNet on three digit domains and tests on the
fourth (DomainBed leave-one-domain-out), with dropout 0.9 on the 512-d penultimate
features. Runs with no downloads; the first run builds the data and pretrains the
backbone (a few minutes), later runs reuse both.

  python -m richft_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m richft_jax.main --config=configs/demo.py --workdir=/tmp/demo_mnist \
      --config.data.test_domains=mnist
  python -m richft_jax.main --config=configs/demo_erm.py --workdir=/tmp/demo_erm   # rate 0
  python -m richft_jax.main --config=configs/demo.py:tiny --workdir=/tmp/smoke   # seconds

Numbers it reaches are in the README ("Embedded benchmark").
"""

import os

from richft_jax import config_lib

CACHE = os.environ.get("RICHFT_CACHE", os.path.join("~", ".cache", "richft_jax"))


def get_config(arg: str | None = None):
    c = config_lib.base_config()
    c.config_name = "demo"
    c.method = "very_large_dropout"
    c.dropout_rate = 0.9
    c.data.name = "digits_domains"
    c.data.test_domains = "syn"
    c.data.batch_size_per_domain = 32
    c.data.augment = "crop"
    c.model.name = "small_resnet"
    c.model.kwargs.widths = (16, 32, 64, 128)
    c.model.kwargs.blocks = (1, 1, 1, 1)
    c.model.kwargs.stem_stride = 2  # 16x16 maps from the stem: 4x cheaper, as accurate here.
    c.model.kwargs.feature_dim = 512  # Widened penultimate layer: room for 90% dropout.
    c.model.freeze_bn = True
    c.pretrained.path = os.path.join(CACHE, "demo_pretrain_small_resnet")
    c.pretrained.pretrain_config = "configs/demo_pretrain.py"
    c.optim.name = "sgd"
    c.optim.lr = 3e-3
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.head_lr_factor = 10.0
    c.optim.decay_at = (0.5,)
    c.num_steps = 900
    c.log_every = 100
    c.eval_every = 150
    c.checkpoint_every = 150
    c.keep_checkpoints = 6  # All of them: the along-run ensembles and soups use them.
    c.moving_average_start = 150  # The paper's along-run weight average, evaluated alongside.
    if arg == "tiny":  # Seconds-long smoke runs and tests: same path, tiny sizes.
        c.config_name = "demo_tiny"
        c.model.kwargs.widths = (8, 8, 16, 16)
        c.model.kwargs.feature_dim = 64
        c.pretrained.path = os.path.join(CACHE, "demo_pretrain_tiny")
        c.pretrained.pretrain_config = "configs/demo_pretrain.py:tiny"
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 20, 5, 10, 10
        c.moving_average_start = None
    return c
