"""The embedded default: very-large-dropout fine-tuning on the digits domains.

Fine-tunes the glyphs-pretrained small ResNet on three digit domains and tests on the
fourth (DomainBed leave-one-domain-out), with dropout 0.9 on the 512-d penultimate
features. Runs with no downloads; the first run builds the data (later runs reuse it), and
the backbone is the glyphs-pretrained one shipped with the package, loaded as it is (no
pretraining; how it was made and how to re-make it: configs/demo_pretrain.py).

  python -m richft_jax.main --config=demo --workdir=/tmp/demo
  python -m richft_jax.main --config=demo --workdir=/tmp/demo_mnist \
      --config.data.test_domains=mnist
  python -m richft_jax.main --config=demo_erm --workdir=/tmp/demo_erm   # rate 0
  python -m richft_jax.main --config=demo:tiny --workdir=/tmp/smoke   # seconds

Args: `tiny` (seconds-long smoke runs and tests: same path, tiny sizes).
Numbers it reaches are in the README ("Embedded benchmark").
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import demo_pretrain

ARGS = {"tiny": False}


def build(tiny: bool = False) -> ml_collections.ConfigDict:
    """The demo config; `tiny`: tiny widths and steps, and a tiny backbone pretrained on first
    use (the full size loads the shipped one)."""
    c = config_lib.base_config()
    c.config_name = "demo_tiny" if tiny else "demo"
    c.dropout_rate = 0.9
    c.method = method(c.dropout_rate)
    c.data.name = "digits_domains"
    c.data.test_domains = "syn"
    c.data.batch_size_per_domain = 32
    c.data.augment = "crop"
    # The training domains' in splits (read by no selection, ID or OOD number): 500 examples
    # each per round, not all 5,438 (58% of an evaluation round).
    c.data.eval_train_in_max_examples = 500
    # A round's splits in one packed stream take 0.80 s at 256, 0.82-0.85 s at 128 and
    # 0.99-1.01 s at 512 on a 2-core CPU (the same accuracies; docs/benchmarks.md).
    c.data.eval_batch_size = 256
    c.model.name = "small_resnet"
    c.model.kwargs.widths = (8, 8, 16, 16) if tiny else (16, 32, 64, 128)
    c.model.kwargs.blocks = (1, 1, 1, 1)
    c.model.kwargs.stem_stride = 2  # 16x16 maps from the stem: 4x cheaper, as accurate here.
    c.model.kwargs.feature_dim = 64 if tiny else 512  # Widened: room for 90% dropout.
    # Convolutions XLA runs slowly on a CPU (1x1, and the last stage's 3x3 over 2x2 maps) as
    # matmuls: "auto" = on a CPU only; conv|dot forces one (models/layers.py, Conv).
    c.model.kwargs.conv_impl = "auto"
    c.model.freeze_bn = True
    # The shipped backbone (never pretrained here); tiny: pretrained on first use.
    tiny_path = config_lib.cache_path("demo_pretrain_tiny")
    c.pretrained.path = tiny_path if tiny else demo_pretrain.shipped_backbone()
    c.pretrained.pretrain_config = "demo_pretrain:tiny" if tiny else demo_pretrain.SHIPPED_CONFIG
    c.optim.name = "sgd"
    c.optim.lr = 3e-3
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.head_lr_factor = 10.0
    c.optim.decay_at = (0.5,)
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 900, 100, 150, 150
    if tiny:
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 20, 5, 10, 10
    c.keep_checkpoints = 6  # All of them: the along-run ensembles and soups use them.
    # The paper's along-run weight average, evaluated alongside (off at tiny sizes).
    c.moving_average_start = None if tiny else 150
    return c


def method(dropout_rate: float) -> str:
    """The results' method name of fine-tuning with penultimate dropout at this rate."""
    return "very_large_dropout" if dropout_rate > 0 else "erm"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
