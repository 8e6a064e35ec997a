"""Combine fine-tuned runs: uniform and greedy soups, output ensembles, interpolation.

  python -m richft_jax.main --config=combine --workdir=/tmp/combined \
      --config.checkpoints=/tmp/run_seed0,/tmp/run_seed1,/tmp/run_seed2

Runs must share the dataset, test domains, trial seed and architecture (and, for weight
averaging to make sense, the pretrained initialisation). No args.
"""

import ml_collections

from richft_jax import config_lib

ARGS = {}


def build() -> ml_collections.ConfigDict:
    """The combination task's config; the runs come from --config.checkpoints."""
    c = ml_collections.ConfigDict()
    c.task = "combine"
    c.config_name = "combine"
    c.checkpoints = ""  # Comma-separated run directories.
    c.which = "best"  # "best" (training-domain-validation selected) | "latest".
    c.combinations = "individual,uniform_soup,greedy_soup,ensemble_sum_logits,ensemble_mean_probs"
    c.greedy_strict = True  # Model soups: strictly better; False: not worse (DiWA/Ratatouille).
    c.interpolation_alphas = (0.0, 0.25, 0.5, 0.75, 1.0)  # Between the first two runs.
    # Output ensembles vmap this many models per pass inside one compiled loop; 0: all K on
    # accelerators, 1 on CPU (weight_space.models_per_pass).
    c.models_per_pass = 0
    c.method_prefix = ""  # Prepended to each row's method, e.g. "erm+" for "erm+greedy_soup".
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return build(**config_lib.parse_arg(arg, **ARGS))
