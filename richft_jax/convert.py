r"""Published checkpoint -> Orbax checkpoint that configs point `pretrained.path` at.

  python -m richft_jax.convert --source=B_16-i21k-...npz --format=big_vision_npz \
      --model=vit_b16 --out=~/.cache/richft_jax/vit_b16_augreg_i21k
  python -m richft_jax.convert --source=resnet50.tv2_in1k.safetensors \
      --format=torchvision_safetensors --model=resnet50 --out=~/.cache/richft_jax/resnet50_v2

(or `richft-convert` with the same flags).

Writes OUT/checkpoints/0 in the layout the train loop reads (`params/backbone`, the source
head as `params/head`, `batch_stats/backbone`), plus the source file's name and format as
metadata. With --model, every parameter is checked against that architecture first. Configs
can also point at the original file directly; converting once saves re-reading and checks it.
--source and --out: local paths or gs:// URLs (e.g. --out=gs://BUCKET/weights/vit_b16).
"""

import os

from absl import app, flags
from etils import epath

from richft_jax import checkpoints, cli, paths
from richft_jax.models import pretrained


def _drop_empty(tree: dict) -> dict:
    """The tree without empty subtrees (a ViT has no BatchNorm statistics)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_empty(value)
            if not value:
                continue
        out[key] = value
    return out


def convert(
    source: str | os.PathLike, fmt: str, out: str | os.PathLike, model: str | None = None
) -> epath.Path:
    """Reads `source` in format `fmt` and writes it as an Orbax checkpoint under `out` (both
    local or gs://)."""
    if fmt not in pretrained.FORMATS:
        raise ValueError(f"--format={fmt!r} is not one of {pretrained.FORMATS}.")
    source = paths.path(source, "--source")
    if model is not None:
        if model not in pretrained.NAMES:
            raise ValueError(f"--model={model!r} is not one of {pretrained.NAMES}.")
        pretrained.from_pretrained(model, source)  # Fails naming the first bad parameter.
    tree = _drop_empty(pretrained.read_checkpoint(source, fmt))
    out = paths.path(out, "--out")
    mngr = checkpoints.manager(out / checkpoints.LATEST, keep=1)
    meta = {"source": str(source), "format": fmt, "model": model}
    checkpoints.save(mngr, 0, tree, meta)
    mngr.wait_until_finished()
    mngr.close()
    return out


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this command line's flags in `flag_values` when it starts, not at import: the
    entry points share flag names (--out), and tests import several of them into one process."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("source", None, "The published .npz / .safetensors.", **fv)
    flags.DEFINE_enum("format", None, pretrained.FORMATS, "The source's format.", **fv)
    flags.DEFINE_string("out", None, "Directory of the Orbax checkpoint.", **fv)
    flags.DEFINE_enum("model", None, pretrained.NAMES, "Check against this backbone first.", **fv)
    flags.mark_flags_as_required(["source", "format", "out"], **fv)


def main(argv: list[str]) -> None:
    """Converts --source into an Orbax checkpoint at --out."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    out = convert(f.source, f.format, f.out, f.model)
    print(f"Wrote {out} (point --config.pretrained.path at it).")


def run() -> None:
    """The `richft-convert` console script: same as `python -m richft_jax.convert`."""
    cli.run(main, __name__, __doc__, define_flags)


if __name__ == "__main__":
    run()
