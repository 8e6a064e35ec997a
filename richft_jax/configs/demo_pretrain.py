"""Pretrains the embedded demo's backbone on font-rendered glyphs (or letters).

No weights can be downloaded, so the demo makes its own "pretrained network": a small
ResNet trained on rendered glyphs, whose classes are disjoint from the digits it is later
fine-tuned on. The shipped backbone (`SHIPPED`, in richft_jax/assets, with its `.json` beside
it: sha256, the command, commit and accuracy) is `SHIPPED_CONFIG`'s full-size result, and the
demo configs load that file: they never pretrain it. To re-pretrain and use the result:

  python -m richft_jax.main --config=demo_pretrain:glyphs --workdir=/tmp/my_backbone
  python -m richft_jax.main --config=demo --workdir=/tmp/demo \
      --config.pretrained.path=/tmp/my_backbone
  python launch/pin_backbone.py --pretrained=/tmp/my_backbone   # re-export the shipped file

The tiny variant is still pretrained on first use, into $RICHFT_CACHE/demo_pretrain_tiny.

Args: `glyphs` (the shipped backbone's source task: 98 classes of Latin and Greek letters and
ASCII symbols, 200,000 images, 10,000 steps; config_name demo_pretrain_glyphs); without it, the
52 letters for 1,200 steps (the earlier backbone, demo_small_resnet_letters.msgpack); `tiny`
(seconds-long smoke runs and tests), `vit` (the small ViT instead of the ResNet; with `tiny`,
the tiny ViT of the method configs' tests).
"""

import ml_collections

from richft_jax import config_lib

ARGS = {"tiny": False, "vit": False, "glyphs": False}
TINY_VIT = {"depth": 2, "dim": 32, "feature_dim": 64}  # The method configs' `tiny,vit` model.
# The demo configs' backbone as shipped (params and BatchNorm statistics), and the config that
# made it (the demo's pretrained.pretrain_config: what a run would pretrain were it missing).
SHIPPED = "demo_small_resnet_glyphs.msgpack"
SHIPPED_CONFIG = "demo_pretrain:glyphs"


def shipped_backbone() -> str:
    """The shipped backbone's path (config.pretrained.path of the full-size demo configs)."""
    return config_lib.shipped(SHIPPED)


def build(tiny: bool = False, vit: bool = False, glyphs: bool = False) -> ml_collections.ConfigDict:
    """Letters (or glyphs) pretraining of the small ResNet (or ViT), at the demo's or tiny sizes."""
    c = config_lib.base_config()
    c.task = "pretrain"
    c.config_name = (
        "demo_pretrain"
        + ("_glyphs" if glyphs else "")
        + ("_vit" if vit else "")
        + ("_tiny" if tiny else "")
    )
    c.method = "pretrain"
    c.data.name = "glyphs" if glyphs else "letters"  # The number of classes is the dataset's.
    c.data.test_domains = "test"  # Train on the "train" split, report the held-out "test".
    c.data.batch_size_per_domain = 64 if tiny else 128
    c.data.augment = "crop"
    # Bounds evaluation cost on the train split (36k letters' images, 180k glyphs').
    c.data.eval_max_examples = 256 if tiny else 2000
    c.model.name = "small_vit" if vit else "small_resnet"
    if vit:
        c.model.kwargs = dict(TINY_VIT) if tiny else {}
    else:
        c.model.kwargs.widths = (8, 8, 16, 16) if tiny else (16, 32, 64, 128)
        c.model.kwargs.blocks = (1, 1, 1, 1)
        c.model.kwargs.stem_stride = 2  # 16x16 maps from the stem: 4x cheaper, as accurate.
        c.model.kwargs.feature_dim = 64 if tiny else 512  # Widened: room for 90% dropout.
    c.model.freeze_bn = False  # Pretraining learns the BatchNorm statistics.
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 50
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 1200, 100, 600, 300
    if glyphs:  # Five times the data and twice the classes: longer (the shipped recipe).
        c.num_steps, c.eval_every, c.checkpoint_every = 10_000, 2500, 2500
    if tiny:
        c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 30, 10, 30, 30
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
