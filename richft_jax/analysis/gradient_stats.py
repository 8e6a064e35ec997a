"""The measurements behind early dropout (Liu et al. 2023, "Dropout reduces underfitting").

  python -m richft_jax.analysis.gradient_stats --config=configs/demo.py:tiny \
      --config.pretrained.path= --out=/tmp/gradient_stats.json

Two runs of the config from the same start and batches, without dropout and with early dropout
(--rate until --cutoff, then 0): every --measure_every steps of the early phase, the variance
of --num_batches mini-batch gradient directions and their alignment with the full-dataset
gradient; at the end, the training loss without dropout. --out: a local path or a gs:// URL.

This module is the command line only: its flags and config are checked before TensorFlow and
JAX are imported; the work is `richft_jax.analysis.gradient_directions.gradient_stats`.
"""

import json

from absl import flags

from richft_jax import cli, config_lib, paths


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """This command line's flags, defined when it starts (see richft_jax.cli)."""
    fv = {"flag_values": flag_values}
    config_lib.define_config_flag("config", **fv)
    flags.DEFINE_string("out", None, "Where to write the JSON results.", **fv)
    flags.DEFINE_float("rate", 0.1, "Early-dropout rate p (Liu et al.: 0.1).", **fv)
    flags.DEFINE_integer("steps", 200, "Training steps of each run.", **fv)
    flags.DEFINE_integer("cutoff", 50, "Steps of early dropout (the early phase).", **fv)
    flags.DEFINE_integer("measure_every", 10, "Measure every N steps of the early phase.", **fv)
    flags.DEFINE_integer("num_batches", 8, "Mini-batches M per measurement.", **fv)
    flags.DEFINE_integer("max_examples", 1024, "Examples per training domain, full gradient.", **fv)
    flags.mark_flags_as_required(["config"], flag_values=flag_values)


def main(argv: list[str]) -> None:
    cli.refuse_arguments(argv)
    from richft_jax.analysis import gradient_directions  # noqa: PLC0415  (JAX, TF: after flags)

    f = flags.FLAGS
    keys = ("rate", "steps", "cutoff", "measure_every", "num_batches", "max_examples")
    out = gradient_directions.gradient_stats(f.config, {k: f[k].value for k in keys})
    for name in ("no_dropout", "early_dropout"):
        r = out[name]
        print(
            f"{name:14s} rate={r['rate']:.2f} direction variance {r['mean_direction_variance']:.4f}"
            f"  alignment with full gradient {r['mean_alignment_with_full']:.4f}"
            f"  final train loss {r['final_train_loss']:.4f}"
        )
    if f.out:  # Local or gs://.
        paths.path(f.out, "--out").write_text(json.dumps(out, indent=1), encoding="utf-8")


def run_cli() -> None:
    """`python -m richft_jax.analysis.gradient_stats` and the `richft-gradient-stats` script."""
    cli.run(
        main,
        __name__,
        __doc__,
        define_flags,
        extra_key_flags=("config",),
        imports=("richft_jax.analysis.gradient_directions",),
    )


if __name__ == "__main__":
    run_cli()
