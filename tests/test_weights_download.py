"""Published weights by name (models/hub.py) through the real download code, against an HTTP
server on 127.0.0.1 serving small files in the real formats at the registered URLs' paths
(RICHFT_WEIGHTS_MIRROR points at it; RICHFT_CACHE at the test's tmp_path).

Downloaded once (the server counts requests), loaded equal to the served file, a dropped
connection and a wrong pinned sha256 leave nothing cached, offline works from the cache and
fails with one error saying what to do otherwise, and runs record the file's sha256 and source.
"""

import dataclasses
import hashlib
import json
import re
import socket
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from local_http import LocalServer  # noqa: E402
from test_pretrained_models import (  # noqa: E402
    TINY_RESNET,
    TINY_VIT,
    tiny_finetune_config,
    torch_resnet,
    vit_npz_params,
)

from richft_jax import config_checks, config_lib, run, train  # noqa: E402
from richft_jax.models import from_pretrained, hub, pretrained, registry  # noqa: E402

_RENAMES = {
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
    "LayerNorm_2": "LayerNorm_1",
    "MlpBlock_3": "MlpBlock_0",
}


def big_vision_layout(p: dict) -> dict:
    """vision_transformer-named arrays in big_vision's layout: `params/` prefix, blocks
    scanned (stacked on axis 0) under linen names, a patch-only top-level pos_embedding."""
    out, blocks = {}, {}
    for key, value in p.items():
        if key == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = value[:, 1:]
        elif key.startswith("Transformer/encoderblock_"):
            _, block, rest = key.split("/", 2)
            for old, new in _RENAMES.items():
                rest = rest.replace(old, new)
            blocks.setdefault(rest, {})[int(block.split("_")[1])] = value
        else:
            out["params/" + key] = value
    for rest, layers in blocks.items():
        out["params/Transformer/encoderblock/" + rest] = np.stack(
            [layers[i] for i in sorted(layers)]
        )
    return out


def url_path(name: str) -> str:
    return urllib.parse.urlsplit(hub.WEIGHTS[name].urls[0]).path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ThreadingHTTPServer on 127.0.0.1 serving a tiny augreg-named ViT .npz (big_vision's
    layout) at vit_b16's path and a tiny torchvision-named ResNet .safetensors at resnet50's."""
    root = tmp_path_factory.mktemp("served")
    vit = vit_npz_params(np.random.default_rng(0), **TINY_VIT, grid=4, classes=7)
    vit["Transformer/posembed_input/pos_embedding"][:, 0] = 0.0  # big_vision: no [CLS] position.
    np.savez(root / "vit.npz", **big_vision_layout(vit))
    resnet = torch_resnet(0, TINY_RESNET["stage_sizes"], TINY_RESNET["width"], True, 5)
    safetensors_torch.save_file(resnet.state_dict(), str(root / "resnet.safetensors"))
    served = LocalServer(
        {
            url_path("vit_b16"): (root / "vit.npz").read_bytes(),
            url_path("resnet50"): (root / "resnet.safetensors").read_bytes(),
        }
    )
    yield {
        "served": served,
        "url": served.url,
        "vit": vit,
        "resnet": {k: v.numpy() for k, v in resnet.state_dict().items()},
    }
    served.close()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """The cache in tmp_path, the mirror at the server, its request log and drops cleared."""
    monkeypatch.setenv("RICHFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(hub.MIRROR_ENV, server["url"])
    server["served"].clear()
    return server


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def cached_files(tmp_path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- the registry
def test_registry_names_urls_formats_and_preprocessing():
    w = hub.WEIGHTS
    hf = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
    augreg = "https://storage.googleapis.com/vit_models/augreg/"
    b16 = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
    assert w["resnet50"].urls == (hf.format("resnet50.tv2_in1k"),)
    assert w["resnet50_v1"].urls == (hf.format("resnet50.tv_in1k"),)
    assert w["resnet18"].urls == (hf.format("resnet18.tv_in1k"),)
    assert w["resnet101"].urls == (hf.format("resnet101.tv2_in1k"),)
    assert w["vit_b16"].urls == (augreg + b16 + ".npz", f"gs://vit_models/augreg/{b16}.npz")
    assert w["vit_b16_i1k"].urls[0] == (
        augreg + b16 + "--imagenet2012-steps_20k-lr_0.01-res_224.npz"
    )
    assert w["vit_s16"].file == "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz"
    assert w["vit_l16"].file == "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz"
    for entry in w.values():
        assert entry.arch in registry.BACKBONES and entry.arch in pretrained.NAMES
        assert entry.fmt in pretrained.FORMATS and entry.image_size == 224
        assert entry.normalize == (
            "imagenet" if entry.arch.startswith("resnet") else "minus_one_one"
        )
        assert pretrained.detect_format(entry.file) == entry.fmt
        assert entry.sha256 is None or re.fullmatch("[0-9a-f]{64}", entry.sha256)
    # The one source of truth: the loaders' error messages list the registry's URLs.
    assert w["resnet50_v1"].urls[0] in pretrained.where_published("resnet50")


def test_mirror_replaces_scheme_and_host_and_keeps_the_path(monkeypatch):
    url = hub.WEIGHTS["resnet50"].urls[0]
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    assert hub.mirrored(url) == url
    monkeypatch.setenv(hub.MIRROR_ENV, "http://10.0.0.5:8080")
    assert (
        hub.mirrored(url)
        == "http://10.0.0.5:8080/timm/resnet50.tv2_in1k/resolve/main/model.safetensors"
    )
    monkeypatch.setenv(hub.MIRROR_ENV, "http://mirror/weights/")
    assert hub.mirrored(url).startswith("http://mirror/weights/timm/resnet50.tv2_in1k/")
    assert hub.mirrored("gs://vit_models/augreg/x.npz") == "gs://vit_models/augreg/x.npz"


# ----------------------------------------------------------------------------- download, cache
def test_vit_by_name_downloads_once_and_loads_the_files_arrays(env, tmp_path):
    served = env["served"]
    model, variables = from_pretrained("vit_b16", **TINY_VIT)
    assert served.requests == [url_path("vit_b16")]
    path = hub.cache_file("vit_b16")
    assert path == tmp_path / "cache" / "weights" / "vit_b16" / hub.WEIGHTS["vit_b16"].file
    body = served.files[url_path("vit_b16")]
    assert path.read_bytes() == body
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["sha256"] == sha256(body) and side["size"] == len(body)
    assert side["source"] == env["url"] + url_path("vit_b16")
    # big_vision's scanned layout read back to exactly the served arrays, leaf by leaf.
    got = traverse_util.flatten_dict(variables["params"], sep="/")
    assert set(got) == set(env["vit"])
    for key, want in env["vit"].items():
        np.testing.assert_array_equal(np.asarray(got[key]), want, err_msg=key)
    # Cached: neither a second load nor fetch asks the server again.
    from_pretrained("vit_b16", **TINY_VIT)
    assert hub.fetch("vit_b16") == path
    assert served.requests == [url_path("vit_b16")]
    assert cached_files(tmp_path) == [
        f"weights/vit_b16/{path.name}",
        f"weights/vit_b16/{path.name}.json",
    ]


def test_resnet_by_name_loads_the_files_tensors(env):
    _, variables = from_pretrained("resnet50", **TINY_RESNET)
    sd = env["resnet"]
    p, s = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(p["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(p["layer2_0"]["bn3"]["scale"], sd["layer2.0.bn3.weight"])
    np.testing.assert_array_equal(
        s["layer1_0"]["downsample_1"]["var"], sd["layer1.0.downsample.1.running_var"]
    )
    n_file = sum(1 for k in sd if not k.endswith("num_batches_tracked"))
    assert len(traverse_util.flatten_dict(variables)) == n_file
    assert env["served"].requests == [url_path("resnet50")]


def test_a_dropped_connection_names_the_url_and_leaves_nothing(env, tmp_path):
    env["served"].drop.add(url_path("resnet50"))
    url = env["url"] + url_path("resnet50")
    with pytest.raises(hub.DownloadError) as e:
        hub.fetch("resnet50")
    msg = str(e.value)
    assert url in msg and "broke off" in msg and "nothing was cached" in msg
    assert cached_files(tmp_path) == []  # No file, no temp file, no sidecar.
    env["served"].drop.clear()
    assert hub.fetch("resnet50").read_bytes() == env["served"].files[url_path("resnet50")]


def test_a_wrong_pinned_sha256_is_refused_naming_both_digests(env, tmp_path, monkeypatch):
    body = env["served"].files[url_path("resnet50")]
    pinned = "0" * 64
    entry = hub.WEIGHTS["resnet50"]
    monkeypatch.setitem(hub.WEIGHTS, "resnet50", dataclasses.replace(entry, sha256=pinned))
    with pytest.raises(hub.ChecksumError) as e:
        hub.fetch("resnet50")
    msg = str(e.value)
    assert "model.safetensors" in msg and pinned in msg and sha256(body) in msg
    assert cached_files(tmp_path) == []
    # The right pin passes; a cached file that does not match a (changed) pin is refused.
    monkeypatch.setitem(hub.WEIGHTS, "resnet50", dataclasses.replace(entry, sha256=sha256(body)))
    path = hub.fetch("resnet50")
    monkeypatch.setitem(hub.WEIGHTS, "resnet50", dataclasses.replace(entry, sha256=pinned))
    with pytest.raises(hub.ChecksumError, match=re.escape(str(path))):
        hub.fetch("resnet50")


def test_offline_with_nothing_cached_is_one_error_saying_what_to_do(env, tmp_path, monkeypatch):
    mirror = closed_port_url()
    monkeypatch.setenv(hub.MIRROR_ENV, mirror)
    with pytest.raises(hub.DownloadError) as e:
        from_pretrained("vit_b16", **TINY_VIT)
    msg = str(e.value)
    assert mirror + url_path("vit_b16") in msg  # The URL it tried,
    assert str(hub.cache_file("vit_b16")) in msg  # where to put the file by hand,
    assert hub.WEIGHTS["vit_b16"].urls[0] in msg and "gs://vit_models/augreg/" in msg  # from,
    assert "RICHFT_WEIGHTS_MIRROR" in msg  # and the mirror variable.
    assert cached_files(tmp_path) == []


def test_offline_with_the_file_cached_works(env, tmp_path, monkeypatch):
    hub.fetch("resnet50")
    monkeypatch.setenv(hub.MIRROR_ENV, closed_port_url())
    _, variables = from_pretrained("resnet50", **TINY_RESNET)
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], env["resnet"]["fc.bias"])
    assert env["served"].requests == [url_path("resnet50")]


def test_a_file_put_by_hand_is_used_hashed_once_and_checked(env, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, closed_port_url())
    body = env["served"].files[url_path("resnet50")]
    path = hub.cache_file("resnet50")
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    info = hub.provenance("resnet50")
    assert info["sha256"] == sha256(body) and info["source"] == "by hand"
    assert json.loads(path.with_name(path.name + ".json").read_text())["sha256"] == sha256(body)
    path.write_bytes(body[:-100])  # Replaced by a truncated copy: checked again, refused.
    with pytest.raises(hub.DownloadError, match="not a complete torchvision_safetensors"):
        hub.fetch("resnet50")
    assert env["served"].requests == []


def test_from_pretrained_by_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"'resnet51' is not a registered name.*'resnet50'"):
        from_pretrained("resnet51")


# ----------------------------------------------------------------------------- runs
def test_paper_configs_default_to_registered_names_and_validate():
    for spec, name in (("resnet50_dropout", "resnet50"), ("vit_b16_erm", "vit_b16")):
        c = config_lib.load_config_file(spec)
        assert c.pretrained.path == name
        config_checks.validate_config(c)  # A registered name, not refused as a path or URL.
    c = config_lib.load_config_file("resnet50_dropout")
    c.pretrained.path = "vit_b16"
    with pytest.raises(ValueError, match=r"pretrained.path='vit_b16': vit_b16 weights.*resnet50"):
        config_checks.validate_config(c)
    c.pretrained.path = "https://huggingface.co/timm/resnet50.tv2_in1k"
    https = r"'https://huggingface.co/timm/resnet50.tv2_in1k': https:// is not a storage system"
    with pytest.raises(ValueError, match=https + r".*registered name \(resnet50, resnet50_v1"):
        config_checks.validate_config(c)
    c.pretrained.path = "gs://bucket/resnet50.safetensors"  # A bucket is read as it is.
    config_checks.validate_config(c)
    assert str(run.resolve_pretrained(c)) == "gs://bucket/resnet50.safetensors"


def test_load_pretrained_by_name_records_sha256_and_source(env):
    c = config_lib.load_config_file("resnet50_dropout", "dry_run")
    c.model.kwargs = dict(TINY_RESNET)
    model = run.build_model(c, 10)
    init = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params, _ = run.load_pretrained(c, init["params"], init["batch_stats"])
    body = env["served"].files[url_path("resnet50")]
    assert c.pretrained.path == "resnet50"
    assert c.pretrained.sha256 == sha256(body)
    assert c.pretrained.source == env["url"] + url_path("resnet50")
    np.testing.assert_array_equal(
        params["backbone"]["conv1"]["kernel"],
        env["resnet"]["conv1.weight"].transpose(2, 3, 1, 0),
    )


def test_a_run_by_name_writes_sha256_and_source_to_config_json(env, data_dir, tmp_path):
    c = tiny_finetune_config("configs/vit_b16_dropout.py", data_dir, "vit_b16", **TINY_VIT)
    c.moving_average_start = None  # Not this test's subject (it starts after update 301).
    train.train_and_evaluate(c, str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "config.json").read_text())["pretrained"]
    body = env["served"].files[url_path("vit_b16")]
    assert written["path"] == "vit_b16" and written["sha256"] == sha256(body)
    assert written["source"] == env["url"] + url_path("vit_b16")
    assert env["served"].requests == [url_path("vit_b16")]  # Fetched once for the whole run,
    assert env["served"].heads == [url_path("vit_b16")]  # after the preflight asked if it's there.
