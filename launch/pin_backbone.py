"""Exports a finished `demo_pretrain` run's backbone as the file the demo configs ship and load.

  python -m richft_jax.main --config=demo_pretrain:glyphs --workdir=/tmp/pin/pretrain
  python launch/pin_backbone.py --pretrained=/tmp/pin/pretrain --commit=COMMIT --probe

Reads the run's latest checkpoint as the demo read a pretrained run directory
(`checkpoints.restore_state_tree`) and writes, by default over the shipped file
(`demo_pretrain.SHIPPED` in richft_jax/assets; --out elsewhere):
- the .msgpack: {"params": {"backbone"}, "batch_stats": {"backbone"}}, float32,
  keys sorted (flax.serialization.msgpack_serialize; no head, no optimizer state), which
  `models/pretrained.py` reads as format "flax_msgpack" and checks strictly against the model;
- the .json beside it: its sha256 and size, the architecture (model name and
  kwargs), the pretraining command, config and commit, and the source task's accuracy the run
  reached (its summary.json; letters or glyphs, the config's data.name).
--commit: the commit the pretraining ran at (default: this checkout's HEAD). --probe: also the
linear-probe accuracy per digits domain (`analysis.richness.linear_probes`, which
`python -m richft_jax.analysis.backbone_richness` measures too; ~7 min on 2 busy cores).
"""

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import flax.serialization
import numpy as np
from etils import epath

from richft_jax import checkpoints, config_lib
from richft_jax.analysis import richness
from richft_jax.configs import demo_pretrain
from richft_jax.models import hub


def _sorted_float32(tree: dict) -> dict:
    """The tree with keys sorted and leaves as float32 numpy arrays (stable bytes)."""
    return {
        k: _sorted_float32(v) if isinstance(v, dict) else np.asarray(v, np.float32)
        for k, v in sorted(tree.items())
    }


def backbone_variables(pretrained: str | os.PathLike) -> dict:
    """The backbone's params and BatchNorm statistics of a pretraining run directory."""
    tree = checkpoints.restore_state_tree(pretrained)
    return _sorted_float32(
        {
            "params": {"backbone": tree["params"]["backbone"]},
            "batch_stats": {"backbone": (tree.get("batch_stats") or {}).get("backbone", {})},
        }
    )


def _head_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(
        ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def config_spec(config_name: str) -> str:
    """The --config that made a demo_pretrain run, from its config_name
    ("demo_pretrain_glyphs_tiny" -> "demo_pretrain:glyphs,tiny")."""
    base, _, args = config_name.partition("demo_pretrain_")
    return f"demo_pretrain:{args.replace('_', ',')}" if not base and args else config_name


def overrides(spec: str, config: dict) -> list[str]:
    """The `--config.KEY=VALUE` flags that turn config `spec` into the run's `config` (its
    config.json); a ValueError when no flags can (a key the run has that `spec` lacks)."""
    base = json.loads(config_lib.load_config_file(spec).to_json_best_effort())
    flat_base, flat_run = _flat(base), _flat(config)
    if missing := sorted(set(flat_run) - set(flat_base)):
        raise ValueError(
            f"--config={spec} has no key {missing[0]} of the run's config.json: give the config "
            "the run was made with (--config=NAME[:ARG])."
        )
    out = []
    for key, value in flat_run.items():
        if flat_base[key] != value:
            text = ",".join(map(str, value)) if isinstance(value, list) else value
            out.append(f"--config.{key}={'None' if text is None else text}")
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def pin(
    pretrained: str, out: str, commit: str, probe: bool = False, spec: str | None = None
) -> dict:
    """Writes `out` and its `.json` record (with `probe`, the linear probes' accuracies too:
    minutes on a CPU); the record. `spec`: the --config the run was made with (default: from
    its config_name); the record's command adds the overrides that made the run's config."""
    run = epath.Path(pretrained)
    config = json.loads((run / "config.json").read_text())
    spec = spec or config_spec(config["config_name"])
    command = shlex.join(
        ["python", "-m", "richft_jax.main", f"--config={spec}", f"--workdir={pretrained}"]
        + overrides(spec, config)
    )
    summary = json.loads((run / "summary.json").read_text())
    variables = backbone_variables(run)
    out_path = pathlib.Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(flax.serialization.msgpack_serialize(variables))
    n = sum(int(np.size(a)) for a in _leaves(variables["params"]))
    step = checkpoints.latest_step_dir(run).name
    record = {
        "file": out_path.name,
        "size": out_path.stat().st_size,
        "sha256": hub.file_sha256(out_path),
        "what": (
            f"the embedded demo's pretrained backbone: a {config['model']['name']} trained on "
            f"font-rendered {config['data']['name']}, its params and BatchNorm statistics (no "
            f"head, no optimizer state), float32, {n:,} parameters"
        ),
        "model": {"name": config["model"]["name"], "kwargs": config["model"]["kwargs"]},
        "made_by": {
            "pretrain_command": command,
            "export_command": (
                f"python launch/pin_backbone.py --pretrained={pretrained} --commit={commit}"
                + ("" if out == demo_pretrain.shipped_backbone() else f" --out={out}")
                + (" --probe" if probe else "")
            ),
            "commit": commit,
            "checkpoint_step": int(step),
            "wall_time_s": summary.get("wall_time_s"),
            "finished": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime((run / "summary.json").stat().mtime)
            ),
            "pretrain_config": config,
        },
        "quality": richness.letters_accuracy(run),
    }
    if probe:
        record["quality"]["linear_probe"] = {
            "how": richness.PROBE_HOW,
            **richness.linear_probes(str(out_path), model=record["model"]),
        }
    record_path = out_path.parent / (out_path.stem + ".json")
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def accuracy_line(record: dict) -> str:
    """The source test accuracy as main prints it, named by the run's dataset (the record's
    keys say letters_ whatever the source: the format readers expect)."""
    dataset = record["made_by"]["pretrain_config"]["data"]["name"]
    return f"{dataset} test accuracy {record['quality']['letters_test_accuracy']:.4f}"


def _leaves(tree: dict):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else (v,)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--pretrained", required=True, help="a finished demo_pretrain workdir")
    p.add_argument("--out", default=demo_pretrain.shipped_backbone(), help="the .msgpack file")
    p.add_argument("--commit", default=None, help="the pretraining's commit (default: HEAD)")
    p.add_argument("--probe", action="store_true", help="record linear-probe accuracies too")
    p.add_argument("--config", default=None, help="the run's --config (default: its name's)")
    args = p.parse_args(argv)
    commit = args.commit or _head_commit()
    record = pin(args.pretrained, args.out, commit, args.probe, args.config)
    print(f"{args.out}: {record['size']:,} bytes, sha256 {record['sha256']}")
    print(accuracy_line(record))


if __name__ == "__main__":
    sys.exit(main())
