"""How rich a pretrained demo backbone is, measured: one JSON record to compare backbones by.

  python -m richft_jax.analysis.backbone_richness --backbone=shipped \
      [--runs=ERM_RUN,DROPOUT_RUN] --out=richness.json

--backbone: `shipped` (the file the demo configs load), a pinned .msgpack with its .json record
beside it, or a finished `demo_pretrain` run directory. The record: the backbone's file and
architecture, its source-task accuracy, a linear probe per held-out digits domain, and for each
run fine-tuned from it (--runs) the Taylor-model agreement and feature distortion from θ0.

This module is the command line only: its flags are parsed and refused by name before
TensorFlow and JAX are imported; the work is `richft_jax.analysis.richness.measure`.
"""

import json

from absl import flags, logging

from richft_jax import cli, config_lib, paths, results


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """This command line's flags, defined when it starts (see richft_jax.cli)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("backbone", None, "'shipped', a pinned .msgpack or a run dir.", **fv)
    flags.DEFINE_list("runs", [], "Runs fine-tuned from it (e.g. ERM_RUN,DROPOUT_RUN).", **fv)
    flags.DEFINE_string("out", None, "The record's JSON file.", **fv)
    flags.DEFINE_bool("probe", True, "Measure the linear probes (minutes on a CPU).", **fv)
    flags.DEFINE_string("config", "demo", "The probes' digits config, NAME[:ARG].", **fv)
    flags.DEFINE_list("c_grid", None, "The probes' C values (default: the config's).", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the configs').", **fv)
    flags.DEFINE_integer("max_examples", None, "Examples per split for the runs' part.", **fv)
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of each run.", **fv)
    flags.mark_flags_as_required(["backbone", "out"], flag_values=flag_values)


def measure_flags(f: flags.FlagValues) -> dict:
    """`richness.measure` with the parsed flags `f`; writes the record to --out, prints and
    returns it."""
    out = paths.path(f.out, "--out")
    paths.make_dirs(out.parent, "--out")  # Before minutes of measuring, not after.
    config = config_lib.load_config_file(f.config)
    if f.c_grid:
        config.lp_c_grid = tuple(float(c) for c in f.c_grid)
    from richft_jax.analysis import richness  # noqa: PLC0415  (JAX and TF: after the flags)

    record = richness.measure(
        f.backbone,
        [r for r in f.runs if r],
        probe=f.probe,
        config=config,
        data_dir=f.data_dir,
        max_examples=f.max_examples,
        which=f.which,
    )
    results.write_json_atomic(out, record)
    logging.info("Backbone richness of %s written to %s.", f.backbone, out)
    print(json.dumps(record, indent=1))
    return record


def run() -> None:
    """`python -m richft_jax.analysis.backbone_richness`: every input is a flag."""
    imports = ("richft_jax.analysis.richness",)
    cli.run_flags(measure_flags, __name__, __doc__, define_flags, imports=imports)


if __name__ == "__main__":
    run()
