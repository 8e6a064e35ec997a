"""The linear regime of fine-tuning, measured on finished runs: one command, all figures.

  python -m richft_jax.analysis.linear_regime --runs=ERM_RUN,DROPOUT_RUN --out=DIR

For each run (a fine-tuning workdir): its data and model rebuilt, θ_ft restored (its selected
`best/` checkpoint, or `--which=latest`) and θ0 rebuilt (the config's pretrained backbone, or
`--pretrained`, with the run's own initial head; LP-FT's probe head for LP-FT runs); then into
DIR, each as PNG + JSON: taylor_agreement, taylor_trajectory, interpolation, linear_finetune,
and summary.json with the headline numbers (with feature_distortion). Follows Zhang & Bottou
(arXiv 2403.00946). --runs, --out and --pretrained: local paths or gs:// URLs
('gs://BUCKET/sweep/*/erm' globs expanded, their matches sorted).

This module is the command line only: its flags are parsed and refused by name before
TensorFlow and JAX are imported; the work is `richft_jax.analysis.regime.analyze`.
"""

import json

from absl import flags

from richft_jax import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """This command line's flags, defined when it starts (see richft_jax.cli)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_list("runs", None, "Comma-separated run directories.", **fv)
    flags.DEFINE_string("out", None, "Directory for the figures and JSON.", **fv)
    flags.DEFINE_list(
        "analyses",
        None,
        "Any of taylor, trajectory, interpolation, linear_finetune, feature_distortion "
        "(default: all; an unknown name is refused).",
        **fv,
    )
    flags.DEFINE_list("alphas", None, "Interpolation α's (default: 0, 0.1, ..., 1).", **fv)
    flags.DEFINE_integer("max_examples", None, "Examples per split (speed).", **fv)
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of each run.", **fv)
    flags.DEFINE_string("pretrained", None, "θ0's backbone (default: the config's).", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the config's).", **fv)
    flags.DEFINE_integer("lft_steps", 2000, "Linear fine-tuning steps.", **fv)
    flags.DEFINE_integer("lft_eval_every", 200, "Linear fine-tuning evaluation period.", **fv)
    flags.DEFINE_float("lft_lr", 0.01, "Linear fine-tuning learning rate.", **fv)
    flags.DEFINE_float("lft_weight_decay", 5e-3, "Linear fine-tuning weight decay.", **fv)
    flags.mark_flags_as_required(["runs", "out"], flag_values=flag_values)


def analyze_flags(f: flags.FlagValues) -> dict:
    """`regime.analyze` with the parsed flags `f`; prints and returns its output."""
    from richft_jax.analysis import regime  # noqa: PLC0415  (JAX and TF: after the flags)

    chosen = {}
    if f.analyses:
        chosen["analyses"] = [a for a in f.analyses if a]
    if f.alphas:
        chosen["alphas"] = [float(a) for a in f.alphas]
    out = regime.analyze(
        [r for r in f.runs if r],
        f.out,
        max_examples=f.max_examples,
        which=f.which,
        pretrained=f.pretrained,
        data_dir=f.data_dir,
        lft={
            "num_steps": f.lft_steps,
            "eval_every": f.lft_eval_every,
            "lr": f.lft_lr,
            "weight_decay": f.lft_weight_decay,
        },
        **chosen,
    )
    print(json.dumps(out, indent=1))
    return out


def run() -> None:
    """`python -m richft_jax.analysis.linear_regime` and the `richft-linear-regime` script."""
    imports = ("richft_jax.analysis.regime",)
    cli.run_flags(analyze_flags, __name__, __doc__, define_flags, imports=imports)


if __name__ == "__main__":
    run()
