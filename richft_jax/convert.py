"""Published checkpoint -> Orbax checkpoint that configs point `pretrained.path` at.

  python -m richft_jax.convert --source=B_16-i21k-...npz --format=big_vision_npz \
      --model=vit_b16 --out=~/.cache/richft_jax/vit_b16_augreg_i21k
  python -m richft_jax.convert --source=resnet50.tv2_in1k.safetensors \
      --format=torchvision_safetensors --model=resnet50 --out=~/.cache/richft_jax/resnet50_v2

Writes OUT/checkpoints/0 in the layout the train loop reads (`params/backbone`, the source
head as `params/head`, `batch_stats/backbone`), plus the source file's name and format as
metadata. With --model, every parameter is checked against that architecture first. Configs
can also point at the original file directly; converting once saves re-reading and checks it.
"""

import argparse
import os
import pathlib

from richft_jax import checkpoints
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
) -> pathlib.Path:
    """Reads `source` in format `fmt` and writes it as an Orbax checkpoint under `out`."""
    if fmt not in pretrained.FORMATS:
        raise ValueError(f"--format={fmt!r} is not one of {pretrained.FORMATS}.")
    source = pathlib.Path(source).expanduser()
    if model is not None:
        if model not in pretrained.NAMES:
            raise ValueError(f"--model={model!r} is not one of {pretrained.NAMES}.")
        pretrained.from_pretrained(model, source)  # Fails naming the first bad parameter.
    tree = _drop_empty(pretrained.read_checkpoint(source, fmt))
    out = pathlib.Path(out).expanduser()
    mngr = checkpoints.manager(out / checkpoints.LATEST, keep=1)
    meta = {"source": str(source), "format": fmt, "model": model}
    checkpoints.save(mngr, 0, tree, meta)
    mngr.wait_until_finished()
    mngr.close()
    return out


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="The published .npz / .safetensors.")
    parser.add_argument("--format", required=True, choices=pretrained.FORMATS)
    parser.add_argument("--out", required=True, help="Directory of the Orbax checkpoint.")
    parser.add_argument("--model", default=None, help="Check against this backbone first.")
    args = parser.parse_args(argv)
    out = convert(args.source, args.format, args.out, args.model)
    print(f"Wrote {out} (point --config.pretrained.path at it).")
    return out


if __name__ == "__main__":
    main()
