"""Regularized self-labeling (Li & Zhang 2021) on the embedded digits domains.

ERM fine-tuning of the letters-pretrained small ResNet (no dropout) with the three pieces of
`richft_jax/methods/self_labeling.py`: every tensor projected after each update into a ball
of radius D gamma^stage around its pretrained value (stages: stem, stage1..4, widen) and the
head's kernel norm bounded; in-batch label-reweighting softmax(-CE/tau) from 1/6 of training;
self label-correction (confident, disagreeing predictions replace labels) from 1/3 (the paper's
epochs 5 and 10 of 30). Distances travelled per layer, feature distortion and noise stability
go into summary.json.

  python -m richft_jax.main --config=configs/demo_rsl.py --workdir=/tmp/demo_rsl
  python -m richft_jax.main --config=configs/demo_rsl.py:noisy --workdir=/tmp/demo_rsl_noisy

Args (comma-separated): `tiny` (seconds-long, for tests), `noisy` (20% symmetric label noise
in the training domains), `noisy_pairwise` (20% class-dependent y -> y+1), `erm` (the same
setting without the RSL pieces: the comparison row), `domainbed[/ARG]` / `domainbed_vit[/ARG]`
(the paper's ResNet-50 / ViT-B/16 DomainBed config, `configs/resnet50_dropout.py` /
`configs/vit_b16_dropout.py` with ARG, with dropout off and these settings).
"""

from richft_jax import config_lib


def get_config(arg: str | None = None):
    c, args = config_lib.method_base(arg)
    c.config_name = c.config_name.replace("demo", "demo_rsl", 1)
    if not c.config_name.startswith("demo"):
        c.config_name += "_rsl"
    c.method = "rsl"
    c.dropout_rate = 0.0
    sl = c.self_labeling
    sl.radius = 1.0  # D for the stem; x gamma per stage towards the output.
    sl.gamma = 1.5
    sl.head_radius = 10.0
    sl.reweight_start = c.get_ref("num_steps") // 6
    sl.reweight_temperature = 2.0
    sl.correction_start = c.get_ref("num_steps") // 3
    sl.correction_threshold = 0.9
    c.measure.feature_distortion = True
    c.measure.layer_distances = True
    c.measure.noise_stability = True
    if "erm" in args:
        c.method = "erm"
        sl.radius = sl.head_radius = sl.reweight_start = sl.correction_start = None
    if "noisy" in args or "noisy_pairwise" in args:
        c.label_noise.kind = "symmetric" if "noisy" in args else "pairwise"
        c.label_noise.rate = 0.2
        c.config_name += "_noisy" if "noisy" in args else "_noisy_pairwise"
        # Its own row in the tables (report groups runs by method): e.g. "rsl_noisy20".
        c.method += (
            f"_{'noisy' if 'noisy' in args else 'pairnoisy'}{round(100 * c.label_noise.rate)}"
        )
    if not any(a.startswith("domainbed") for a in args):
        c.moving_average_start = None  # The comparison rows need no along-run average.
        c.keep_checkpoints = 2
    return c
