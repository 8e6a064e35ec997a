"""Published checkpoints -> Flax variables: big_vision / vision_transformer `.npz` (ViT) and
torchvision / timm `.safetensors` (ResNet), read without unpickling.

Every source is read into one layout, the one the train loop saves and `load_pretrained` reads
(an Orbax checkpoint written by `python -m richft_jax.convert` holds exactly this):
`{"params": {"backbone": ..., "head": source head}, "batch_stats": {"backbone": ...}}`.
`from_pretrained(name)` gives the source model itself (its logits, or its features), its weights
downloaded once by name (`hub.py`), or `from_pretrained(backbone, path)` from a local file.
A `.msgpack` file (flax.serialization) holds this layout itself, e.g. the demo's backbone shipped
with the package (`config_lib.shipped`, written by launch/pin_backbone.py).
"""

import functools
import io
import json
import os
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from richft_jax import checkpoints, paths
from richft_jax.models import hub, registry, resnet, vit

FORMATS = ("big_vision_npz", "torchvision_safetensors", "flax_msgpack")
NAMES = (*vit.VARIANTS, *resnet.VARIANTS)  # Backbones with published checkpoints (hub.WEIGHTS).


def where_published(name: str) -> str:
    """Where checkpoints for backbone `name` are published (from the one registry,
    `hub.WEIGHTS`), for error messages and docs."""
    entries = [w for w in hub.WEIGHTS.values() if w.arch == name]
    if not entries:
        return "no published weights are known for this backbone"
    listed = "; ".join(f"{w.name!r} = {w.what}: {' or '.join(w.urls)}" for w in entries)
    if entries[0].fmt == "big_vision_npz":
        more = f"all augreg files: {hub.AUGREG_INDEX}"
    else:
        more = (
            "or a torchvision .pth (download.pytorch.org/models) re-saved in a trusted "
            "environment with safetensors.torch.save_file(torch.load(f, weights_only=True), out)"
        )
    return (
        f"{entries[0].fmt} files, by registered name (--config.pretrained.path=NAME downloads "
        f"once into the cache): {listed}; {more}"
    )


# ----------------------------------------------------------------------------- reading files
def detect_format(path: str | os.PathLike) -> str:
    """'big_vision_npz', 'torchvision_safetensors', 'flax_msgpack' (by suffix) or 'orbax' (a
    directory); local or gs://."""
    path = paths.path(path, "pretrained checkpoint")
    if path.is_dir():
        return "orbax"
    if path.suffix == ".npz":
        return "big_vision_npz"
    if path.suffix == ".safetensors":
        return "torchvision_safetensors"
    if path.suffix == ".msgpack":
        return "flax_msgpack"
    raise ValueError(
        f"Pretrained checkpoint {path}: unknown format (expected a .npz, a .safetensors, a "
        ".msgpack file or an Orbax directory written by python -m richft_jax.convert)."
    )


def read_flat(path: str | os.PathLike, fmt: str) -> dict[str, np.ndarray]:
    """The checkpoint's arrays by their names in the file (local or gs://: an object is read
    whole into memory, as np.load and safetensors read files); never unpickles."""
    path = paths.path(path, "pretrained checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"Pretrained checkpoint {path}: no such file.")
    remote = paths.is_remote(path)
    if fmt == "big_vision_npz":
        with np.load(io.BytesIO(path.read_bytes()) if remote else path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if fmt == "torchvision_safetensors":
        from safetensors.numpy import load, load_file

        return load(path.read_bytes()) if remote else load_file(os.fspath(path))
    raise ValueError(f"Checkpoint format {fmt!r} is not one of {FORMATS}.")


_BIG_VISION_RENAMES = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}


def vit_from_npz(flat: dict[str, np.ndarray], source: str) -> dict:
    """vision_transformer / big_vision `.npz` arrays -> the classifier layout of a ViT.

    vision_transformer files load by name. big_vision files are mapped onto them: a `params/`
    prefix dropped, scanned blocks (`encoderblock/...`, stacked on axis 0) unstacked, blocks'
    linen names (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`) renamed, and the
    top-level patch-only `pos_embedding` given a zero [CLS] row (big_vision adds no position to
    [CLS], which is the same function).
    """
    flat = {k.removeprefix("params/"): np.asarray(v) for k, v in flat.items()}
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) > 2 and parts[:2] == ["Transformer", "encoderblock"]:
            for i, layer in enumerate(value):
                rest = [_BIG_VISION_RENAMES.get(p, p) for p in parts[2:]]
                out["/".join(["Transformer", f"encoderblock_{i}", *rest])] = layer
            continue
        if len(parts) > 2 and parts[1].startswith("encoderblock_"):
            parts[2] = _BIG_VISION_RENAMES.get(parts[2], parts[2])
        out["/".join(parts)] = value
    if "pos_embedding" in out:
        pe = out.pop("pos_embedding")
        if "cls" not in out:
            raise ValueError(
                f"Pretrained checkpoint {source}: a big_vision ViT without a [CLS] token "
                "(pool_type 'gap' or 'map') is not supported; use a 'tok' model."
            )
        if vit._grid_side(pe.shape[1]) is not None:
            pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
        out["Transformer/posembed_input/pos_embedding"] = pe
    tree = traverse_util.unflatten_dict(out, sep="/")
    head = tree.pop("head", {})
    return {"params": {"backbone": tree, "head": head}, "batch_stats": {"backbone": {}}}


def resnet_from_torch(flat: dict[str, np.ndarray], source: str) -> dict:
    """torchvision / timm ResNet state_dict arrays -> the classifier layout of a ResNet:
    convs OIHW -> HWIO, Linear transposed, BatchNorm weight/bias -> scale/bias and running
    statistics -> batch_stats mean/var; `num_batches_tracked` dropped."""
    params, stats = {}, {}
    for key, value in flat.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue
        if parts[0].startswith("layer") and len(parts) > 2:
            parts = [f"{parts[0]}_{parts[1]}", *parts[2:]]
        if len(parts) > 2 and parts[-3] == "downsample":
            parts = [*parts[:-3], f"downsample_{parts[-2]}", parts[-1]]
        module, leaf = parts[:-1], parts[-1]
        value = np.asarray(value)
        if leaf == "weight" and value.ndim == 4:
            params["/".join([*module, "kernel"])] = value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            params["/".join([*module, "kernel"])] = value.T
        elif leaf == "weight":
            params["/".join([*module, "scale"])] = value
        elif leaf == "bias":
            params["/".join([*module, "bias"])] = value
        elif leaf in ("running_mean", "running_var"):
            stats["/".join([*module, leaf.removeprefix("running_")])] = value
        else:
            raise ValueError(
                f"Pretrained checkpoint {source}: unexpected tensor {key!r} {value.shape} for a "
                "torchvision-layout ResNet."
            )
    tree = traverse_util.unflatten_dict(params, sep="/")
    head = tree.pop("fc", {})
    return {
        "params": {"backbone": tree, "head": head},
        "batch_stats": {"backbone": traverse_util.unflatten_dict(stats, sep="/")},
    }


def source_key(name: str, path: str, fmt: str | None = None) -> str:
    """The name in the source file of our parameter `path` (for error messages)."""
    if fmt == "flax_msgpack":  # Our own layout: the same path.
        return path
    parts = path.split("/")[2:]  # drop params|batch_stats / backbone|head
    if name.startswith("vit"):
        if path.startswith("params/head"):
            return "/".join(["head", *parts])
        return "/".join(parts)
    leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    parts = [p.replace("_", ".") if p.startswith(("layer", "downsample")) else p for p in parts]
    if path.startswith("params/head"):
        parts = ["fc", *parts]
    return ".".join([*parts[:-1], leaf.get(parts[-1], parts[-1])])


def read_checkpoint(path: str | os.PathLike, fmt: str | None = None) -> dict:
    """Any supported checkpoint (file or converted Orbax dir, local or gs://) in the classifier
    layout."""
    path = paths.path(path, "pretrained checkpoint")
    fmt = fmt or detect_format(path)
    if fmt == "orbax":
        tree = checkpoints.restore_state_tree(path)
        return {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}
    if fmt == "flax_msgpack":  # The layout itself (msgpack_restore never unpickles).
        tree = flax.serialization.msgpack_restore(path.read_bytes())
        return {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}
    flat = read_flat(path, fmt)
    return (vit_from_npz if fmt == "big_vision_npz" else resnet_from_torch)(flat, str(path))


# ----------------------------------------------------------------------------- fitting
def fit_to_model(tree: dict, init: dict) -> dict:
    """Resizes the ViT position embedding of `tree` to the grid of `init` (same layout) when
    the image size differs; everything else is left to the strict merge."""
    pe_path = ("params", "backbone", "Transformer", "posembed_input", "pos_embedding")
    try:
        target = functools.reduce(lambda t, k: t[k], pe_path, init)
        got = functools.reduce(lambda t, k: t[k], pe_path, tree)
    except (KeyError, TypeError):
        return tree
    if got.shape[1] != target.shape[1] and got.shape[2] == target.shape[2]:
        tree = jax.tree.map(lambda x: x, tree)  # A copy: never edit the caller's tree.
        functools.reduce(lambda t, k: t[k], pe_path[:-1], tree)[pe_path[-1]] = (
            vit.resize_position_embedding(got, target.shape[1])
        )
    return tree


def check_matches(tree: dict, init: dict, source: str, name: str, fmt: str | None = None) -> None:
    """Fails on the first leaf of `init` missing from `tree` or shaped otherwise, naming the
    file, our parameter path, the source's key (in a file of format `fmt`), both shapes and
    where weights are published."""
    have = traverse_util.flatten_dict(tree, sep="/")
    for path, value in traverse_util.flatten_dict(init, sep="/").items():
        got = have.get(path)
        if got is not None and tuple(np.shape(got)) == tuple(value.shape):
            continue
        what = "is missing" if got is None else f"has shape {tuple(np.shape(got))}"
        key = source_key(name, path, fmt)
        hint = f"Is it a {name} checkpoint? {name}: {where_published(name)}."
        raise ValueError(
            f"Pretrained checkpoint {source}: parameter {path!r} (key {key!r} "
            f"in the source file) {what}, the model expects shape {tuple(value.shape)}. "
            + ((fmt == "flax_msgpack" and made_for(source)) or hint)
        )


def made_for(source: str) -> str | None:
    """The architecture a `.msgpack` file was made for, from the `<stem>.json` record beside it
    (e.g. the shipped demo backbone's), or None without one."""
    record = paths.path(source, "pretrained checkpoint").with_suffix(".json")
    try:
        model = json.loads(record.read_text())["model"]
        return (
            f"It was made for config.model.name={model['name']!r} with config.model.kwargs "
            f"{model['kwargs']} (its record: {record})."
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_backbone(
    name: str, path: str | os.PathLike, params: dict, batch_stats: dict
) -> tuple[dict, dict]:
    """The classifier's variables with the backbone (params and BatchNorm statistics) taken
    from a published file or a converted Orbax dir (local or gs://); the new head is left as
    initialised."""
    path = paths.path(path, "config.pretrained.path")
    if not path.exists():
        raise FileNotFoundError(
            f"config.pretrained.path: {path} does not exist. {name}: {where_published(name)}."
        )
    init = {"params": {"backbone": params["backbone"]}}
    if batch_stats:
        init["batch_stats"] = {"backbone": batch_stats["backbone"]}
    fmt = detect_format(path)
    tree = fit_to_model(read_checkpoint(path, fmt), init)
    check_matches(tree, init, str(path), name, fmt)
    params = {
        **params,
        "backbone": checkpoints.merge_pretrained(
            params["backbone"], tree["params"]["backbone"], str(path), "params/backbone"
        ),
    }
    if batch_stats:
        batch_stats = {
            **batch_stats,
            "backbone": checkpoints.merge_pretrained(
                batch_stats["backbone"],
                tree["batch_stats"]["backbone"],
                str(path),
                "batch_stats/backbone",
            ),
        }
    return params, batch_stats


# ----------------------------------------------------------------------------- one-call API
def source_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The source architecture of backbone `name` with its own head (`head` / `fc`); float32
    unless `dtype` says otherwise, so it reproduces the published forward pass."""
    return registry.build_backbone(name, num_classes=num_classes, **{"dtype": "float32", **kwargs})


def _head_name(name: str) -> str:
    return "head" if name.startswith("vit") else "fc"


def from_pretrained(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, dict]:
    """`(model, variables)` of a published checkpoint: `model.apply(variables, images,
    train=False)` gives the source's logits for float32 NHWC images preprocessed as the source
    expects ([-1, 1] for augreg ViTs, ImageNet mean/std for torchvision ResNets), and
    `features=True` the penultimate features.

    `name`: a registered name of published weights (`hub.WEIGHTS`: downloaded once into the
    cache when `path` is None) or a backbone (`path` then names the file or Orbax dir, local or
    gs://).
    `image_size` (ViT): resize the position embedding to that input size (default: the
    checkpoint's). kwargs override the variant (e.g. depth) for non-standard files."""
    if path is None:
        path = hub.fetch(name)
    if name in hub.WEIGHTS:
        name = hub.WEIGHTS[name].arch
    path = paths.path(path, "path")
    tree = read_checkpoint(path)
    head = tree["params"].get("head") or {}
    if "kernel" not in head:
        raise ValueError(
            f"Pretrained checkpoint {path}: no classification head "
            f"({'head' if name.startswith('vit') else 'fc'}) to build the source model from."
        )
    num_classes = int(np.shape(head["kernel"])[-1])
    backbone = tree["params"]["backbone"]
    if name.startswith("vit"):
        if "pre_logits" in backbone:
            rep = int(np.shape(backbone["pre_logits"]["kernel"])[-1])
            kwargs.setdefault("representation_size", rep)
        if image_size is None:
            tokens = np.shape(backbone["Transformer"]["posembed_input"]["pos_embedding"])[1]
            side = vit._grid_side(tokens - 1) or 14
            image_size = side * kwargs.get("patch_size", 16)
    model = source_model(name, num_classes, **kwargs)
    size = image_size or 224
    init = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    layout = {"params": {"backbone": dict(init["params"]), "head": {}}}
    layout["params"]["head"] = layout["params"]["backbone"].pop(_head_name(name))
    if "batch_stats" in init:
        layout["batch_stats"] = {"backbone": init["batch_stats"]}
    tree = fit_to_model(tree, layout)
    check_matches(tree, layout, str(path), name)
    params = {**tree["params"]["backbone"], _head_name(name): tree["params"]["head"]}
    variables = {"params": _cast_like(params, init["params"])}
    if "batch_stats" in init:
        variables["batch_stats"] = _cast_like(tree["batch_stats"]["backbone"], init["batch_stats"])
    return model, variables


def _cast_like(tree: dict, like: dict) -> dict:
    """`tree` restricted to the leaves of `like`, as jnp arrays of their dtypes."""
    return jax.tree.map(lambda ref, x: jnp.asarray(x, ref.dtype), like, _select(tree, like))


def _select(tree: dict, like: dict) -> dict:
    return {k: _select(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in like.items()}
