"""Throughput benchmark of the train step and evaluation paths: prints a table, writes JSON.

  python -m benchmarks.benchmark [--model=small_resnet,small_vit] [--batch=128] [--steps=30]
      [--image_size=32] [--dtype=float32|bfloat16] [--remat] [--devices=N] [--torch|--no-torch]
      [--k=4] [--profile=N] [--compile_only] [--out=benchmark.json]

The command: its flags, parsed before JAX, TensorFlow or torch is imported (so --help and a
mistyped flag answer at once), then one row per backbone from `benchmarks.throughput` (what is
measured: its docstring), JAX / PyTorch ratios included. Boolean flags take absl's --noNAME and
argparse's --no-NAME.
"""

import importlib.util
import json
import re

from absl import app, flags

from richft_jax import config_checks


def _known_backbones(names: list[str]) -> bool:
    known = config_checks.BACKBONE_RATES
    if unknown := [n for n in names if n not in known]:
        raise flags.ValidationError(f"--model: {unknown} not in {sorted(known)}.")
    return True


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the benchmark's flags in `flag_values` when it starts, not at import (tests
    parse them into their own FlagValues)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_list("model", ["small_resnet"], "Comma-separated backbones.", **fv)
    flags.DEFINE_integer("batch", 128, "Global batch size.", lower_bound=1, **fv)
    flags.DEFINE_integer("steps", 30, "Timed train steps per measurement.", lower_bound=1, **fv)
    flags.DEFINE_integer("image_size", None, "Default: 32 (demo backbones), else 224.", **fv)
    flags.DEFINE_enum(
        "dtype",
        "float32",
        ["float32", "bfloat16"],
        "Compute dtype (config.model.dtype; parameters stay float32).",
        **fv,
    )
    flags.DEFINE_boolean(
        "remat", False, "Rematerialise the ViT blocks (config.model.kwargs.remat; vit_*).", **fv
    )
    flags.DEFINE_boolean(
        "compile_only", False, "Only compile the train step: GFLOP, compiled memory.", **fv
    )
    flags.DEFINE_integer("devices", None, "Use the first N devices.", lower_bound=1, **fv)
    flags.DEFINE_boolean(
        "torch",
        importlib.util.find_spec("torch") is not None,
        "Also time the PyTorch step (default: on when torch is importable).",
        **fv,
    )
    flags.DEFINE_boolean("torch_compile", True, "Also time the torch.compile variant.", **fv)
    flags.DEFINE_integer("k", 4, "Ensemble size.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "peak_size", 2048, "Side of the matmul that measures the peak FLOP/s.", lower_bound=1, **fv
    )
    flags.DEFINE_integer(
        "profile", 0, "Print the N op kinds the train step spends most on.", lower_bound=0, **fv
    )
    flags.DEFINE_string("out", None, "Write the results as JSON here.", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).", **fv)
    flags.register_validator("model", _known_backbones, **fv)


def absl_spellings(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """`argv` with argparse's `--no-NAME` of a boolean flag written as absl's `--noNAME`, so
    the commands written for the argparse version of this benchmark still run."""

    def spelling(arg: str) -> str:
        m = re.fullmatch(r"--no-(\w+)", arg)
        if m and m[1] in flag_values and flag_values[m[1]].boolean:
            return f"--no{m[1]}"
        return arg

    return [argv[0], *map(spelling, argv[1:])]


def parse_flags(argv: list[str]) -> list[str]:
    """app.run's flags parser: absl's (usage and exit on bad flags), with `--no-NAME` too."""
    return app.parse_flags_with_usage(absl_spellings(argv))


def benchmark_all(f: flags.FlagValues = flags.FLAGS) -> list[dict]:
    """One row per --model backbone; prints the table and writes --out."""
    import jax  # noqa: PLC0415  (after the flags: --help and a bad flag answer at once)

    from benchmarks import throughput  # noqa: PLC0415

    if f.devices is not None and f.devices > jax.device_count():
        raise app.UsageError(f"--devices={f.devices}: this process has {jax.device_count()}.")
    if f.batch % (f.devices or jax.device_count()):
        raise app.UsageError(f"--batch={f.batch} must be a multiple of the device count.")
    rows = [
        throughput.benchmark_backbone(
            name,
            f.batch,
            f.steps,
            f.k,
            f.data_dir,
            image_size=f.image_size,
            dtype=f.dtype,
            devices=f.devices,
            torch=f.torch,
            torch_compile=f.torch_compile,
            profile=f.profile,
            remat=f.remat,
            compile_only=f.compile_only,
            peak_size=f.peak_size,
        )
        for name in f.model
    ]
    print(throughput.format_table(rows))
    if f.out:
        with open(f.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return rows


def main(argv: list[str]) -> None:
    """Benchmarks the --model backbones."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from richft_jax import xla_cpu  # noqa: PLC0415

    xla_cpu.tune()  # Before JAX starts its backend (no effect once one exists, as in tests).
    benchmark_all(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
