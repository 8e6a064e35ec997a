"""Regularized self-labeling (Li & Zhang 2021) on the embedded digits domains.

ERM fine-tuning of the glyphs-pretrained small ResNet (no dropout) with the three pieces of
`richft_jax/methods/self_labeling.py`: every tensor projected after each update into a ball
of radius D gamma^stage around its pretrained value (stages: stem, stage1..4, widen) and the
head's kernel norm bounded; in-batch label-reweighting softmax(-CE/tau) from 1/6 of training;
self label-correction (confident, disagreeing predictions replace labels) from 1/3 (the paper's
epochs 5 and 10 of 30). Distances travelled per layer, feature distortion and noise stability
go into summary.json.

  python -m richft_jax.main --config=demo_rsl --workdir=/tmp/demo_rsl
  python -m richft_jax.main --config=demo_rsl:noisy --workdir=/tmp/demo_rsl_noisy
  python -m richft_jax.main --config=demo_rsl:base=resnet50,dataset=pacs,test_domain=2 ...

Args: `tiny` (seconds-long, for tests), `noisy` (20% symmetric label noise in the training
domains), `noisy_pairwise` (20% class-dependent y -> y+1), `erm` (the same setting without the
RSL pieces: the comparison row), `base=resnet50` / `base=vit_b16` (the paper's DomainBed config,
`resnet50_dropout` / `vit_b16_dropout` with its `dataset`, `test_domain`, `dry_run`, with
dropout off and these settings).
"""

import ml_collections

from richft_jax import config_lib
from richft_jax.configs import _method_base

ARGS = {**_method_base.ARGS, "noisy": False, "noisy_pairwise": False, "erm": False}
NOISE_RATE = 0.2


def build(
    tiny: bool = False,
    noisy: bool = False,
    noisy_pairwise: bool = False,
    erm: bool = False,
    base: str = "demo",
    dataset: str = "pacs",
    test_domain: str = "0",
    dry_run: bool = False,
) -> ml_collections.ConfigDict:
    """RSL (or, with `erm`, plain fine-tuning) on the demo or a paper config, under label noise
    with `noisy` / `noisy_pairwise`."""
    if noisy and noisy_pairwise:
        raise ValueError("config arguments noisy and noisy_pairwise: give one of them.")
    c = _method_base.method_base(tiny, base, dataset, test_domain, dry_run)
    name = ("demo_rsl" + ("_tiny" if tiny else "")) if base == "demo" else f"{c.config_name}_rsl"
    c.method = "erm" if erm else "rsl"
    c.dropout_rate = 0.0
    sl = c.self_labeling
    if not erm:
        sl.radius = 1.0  # D for the stem; x gamma per stage towards the output.
        sl.head_radius = 10.0
        sl.reweight_start = c.get_ref("num_steps") // 6
        sl.correction_start = c.get_ref("num_steps") // 3
    sl.gamma = 1.5
    sl.reweight_temperature = 2.0
    sl.correction_threshold = 0.9
    c.measure.feature_distortion = True
    c.measure.layer_distances = True
    c.measure.noise_stability = True
    if noisy or noisy_pairwise:
        c.label_noise.kind = "symmetric" if noisy else "pairwise"
        c.label_noise.rate = NOISE_RATE
        name += "_noisy" if noisy else "_noisy_pairwise"
        # Its own row in the tables (report groups runs by method): e.g. "rsl_noisy20".
        c.method += f"_{'noisy' if noisy else 'pairnoisy'}{round(100 * NOISE_RATE)}"
    c.config_name = name
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
