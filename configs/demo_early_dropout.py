"""Early dropout (Liu et al. 2023, "Dropout reduces underfitting") on the embedded digits domains.

The demo's penultimate dropout at rate 0.9 for the first quarter of the steps, then none
(`dropout_schedule="early"`, `dropout_cutoff=0.25`; `early_linear` decays it to 0 instead).
The rate is an argument of the jitted step: the schedule never recompiles it.

  python -m richft_jax.main --config=configs/demo_early_dropout.py --workdir=/tmp/demo_early

Args (comma-separated): `tiny`; `vit` (the small ViT, with dropout 0.1 inside its blocks on the
same schedule, as Liu et al.'s early-dropout recipe); `domainbed[/ARG]` / `domainbed_vit[/ARG]`
(the paper's DomainBed ResNet-50 / ViT-B/16 config with this schedule).
"""

from richft_jax import config_lib


def base(arg: str | None):
    """The demo (ResNet, or the small ViT with `vit`), or the paper's DomainBed configs."""
    c, args = config_lib.method_base(arg)
    if any(a.startswith("domainbed") for a in args):
        return c, args
    c.moving_average_start = None  # The comparison rows need no along-run average.
    c.keep_checkpoints = 2
    if "vit" in args:
        c.model.name = "small_vit"
        c.model.kwargs = {"depth": 2, "dim": 32, "feature_dim": 64} if "tiny" in args else {}
        # The tiny ViT has no pretrained checkpoint: it trains from its init (tests only).
        vit_path = c.pretrained.path.replace("small_resnet", "small_vit")
        c.pretrained.path = None if "tiny" in args else vit_path
        c.pretrained.pretrain_config = None if "tiny" in args else "configs/demo_pretrain.py:vit"
    return c, args


def get_config(arg: str | None = None):
    c, args = base(arg)
    c.config_name = c.config_name.replace("demo", "demo_early_dropout", 1)
    c.method = "early_dropout"
    c.dropout_rate = 0.9
    c.dropout_schedule = "early"
    c.dropout_cutoff = 0.25
    if "vit" in c.model.name:
        c.block_dropout_rate = 0.1
    return c
