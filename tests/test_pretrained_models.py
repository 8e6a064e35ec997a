"""Published-checkpoint loaders against an independent PyTorch forward pass.

Random weights are written in each real format (vision_transformer / big_vision `.npz` names;
torchvision state_dict names in `.safetensors`), loaded by `from_pretrained`, and the logits
compared with compact torch references written here (torchvision's module names, big_vision's
ViT math). Then: position-embedding resizing, error messages, the converter, parameter counts of
the real variants, and a few fine-tuning steps from a converted checkpoint through the loop.
"""

import math
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
F = torch.nn.functional

from richft_jax import checkpoints, config_lib, convert, train  # noqa: E402
from richft_jax.models import from_pretrained, pretrained, registry, vit  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_VIT = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 4, "patch_size": 4}
TINY_RESNET = {"stage_sizes": (2, 1, 1, 1), "width": 8}


# ----------------------------------------------------------------------------- ViT reference
def vit_npz_params(rng, width, depth, mlp_dim, num_heads, patch_size, grid, classes, rep=None):
    """Random weights under vision_transformer's .npz names and shapes."""
    dh = width // num_heads
    normal = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    p = {
        "embedding/kernel": normal(patch_size, patch_size, 3, width),
        "embedding/bias": normal(width),
        "cls": normal(1, 1, width),
        "Transformer/posembed_input/pos_embedding": normal(1, 1 + grid * grid, width),
        "Transformer/encoder_norm/scale": 1 + normal(width),
        "Transformer/encoder_norm/bias": normal(width),
        "head/kernel": normal(rep or width, classes),
        "head/bias": normal(classes),
    }
    if rep:
        p["pre_logits/kernel"], p["pre_logits/bias"] = normal(width, rep), normal(rep)
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            p[b + ln + "/scale"], p[b + ln + "/bias"] = 1 + normal(width), normal(width)
        a = b + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            p[a + name + "/kernel"] = normal(width, num_heads, dh)
            p[a + name + "/bias"] = normal(num_heads, dh)
        p[a + "out/kernel"], p[a + "out/bias"] = normal(num_heads, dh, width), normal(width)
        m = b + "MlpBlock_3/"
        p[m + "Dense_0/kernel"], p[m + "Dense_0/bias"] = normal(width, mlp_dim), normal(mlp_dim)
        p[m + "Dense_1/kernel"], p[m + "Dense_1/bias"] = normal(mlp_dim, width), normal(width)
    return p


def torch_vit(p, images, depth, num_heads, patch_size, posemb=None):
    """big_vision's ViT forward in torch from the .npz arrays: (logits, pre-logit features)."""
    t = lambda k: torch.from_numpy(np.asarray(p[k], np.float32))  # noqa: E731
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = F.conv2d(x, t("embedding/kernel").permute(3, 2, 0, 1), t("embedding/bias"), patch_size)
    x = x.flatten(2).transpose(1, 2)
    n, _, d = x.shape
    pe = t("Transformer/posembed_input/pos_embedding") if posemb is None else posemb
    x = torch.cat([t("cls").expand(n, -1, -1), x], 1) + pe
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        ln = lambda x, name, b=b: F.layer_norm(  # noqa: E731
            x, (d,), t(b + name + "/scale"), t(b + name + "/bias"), eps=1e-6
        )
        a = b + "MultiHeadDotProductAttention_1/"
        y = ln(x, "LayerNorm_0")
        q, k, v = (
            torch.einsum("nld,dhk->nlhk", y, t(a + s + "/kernel")) + t(a + s + "/bias")
            for s in ("query", "key", "value")
        )
        att = torch.einsum("nqhk,nlhk->nhql", q / math.sqrt(q.shape[-1]), k).softmax(-1)
        y = torch.einsum("nhql,nlhk->nqhk", att, v)
        x = x + torch.einsum("nqhk,hkd->nqd", y, t(a + "out/kernel")) + t(a + "out/bias")
        y = ln(x, "LayerNorm_2")
        m = b + "MlpBlock_3/"
        y = F.gelu(y @ t(m + "Dense_0/kernel") + t(m + "Dense_0/bias"), approximate="tanh")
        x = x + y @ t(m + "Dense_1/kernel") + t(m + "Dense_1/bias")
    e = "Transformer/encoder_norm/"
    x = F.layer_norm(x, (d,), t(e + "scale"), t(e + "bias"), eps=1e-6)[:, 0]
    if "pre_logits/kernel" in p:
        x = torch.tanh(x @ t("pre_logits/kernel") + t("pre_logits/bias"))
    return (x @ t("head/kernel") + t("head/bias")).numpy(), x.numpy()


# ----------------------------------------------------------------------------- ResNet reference
class TorchBlock(torch.nn.Module):
    """torchvision's BasicBlock / Bottleneck (v1.5), with its attribute names."""

    def __init__(self, inplanes, width, stride, bottleneck):
        super().__init__()
        nn = torch.nn
        out = width * (4 if bottleneck else 1)
        self.bottleneck = bottleneck
        if bottleneck:
            self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        else:
            self.conv1 = nn.Conv2d(inplanes, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2, self.bn2 = (
                nn.Conv2d(width, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
            )
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        else:
            y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(torch.nn.Module):
    """torchvision's ResNet: state_dict keys conv1.weight, layer1.0.downsample.0.weight, fc..."""

    def __init__(self, stage_sizes, width, bottleneck, classes):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, n in enumerate(stage_sizes):
            blocks = []
            for j in range(n):
                w = width * 2**i
                blocks.append(TorchBlock(inplanes, w, 2 if i > 0 and j == 0 else 1, bottleneck))
                inplanes = w * (4 if bottleneck else 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inplanes, classes)
        self.num_stages = len(stage_sizes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        features = x.mean((2, 3))
        return self.fc(features), features


def torch_resnet(seed, stage_sizes, width, bottleneck, classes):
    """A torch ResNet in eval mode with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    model = TorchResNet(stage_sizes, width, bottleneck, classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint files in the real formats, and the arrays they hold."""
    root = tmp_path_factory.mktemp("published")
    rng = np.random.default_rng(0)
    vit_params = vit_npz_params(rng, **TINY_VIT, grid=4, classes=7)
    np.savez(root / "vit.npz", **vit_params)
    resnet = torch_resnet(0, TINY_RESNET["stage_sizes"], TINY_RESNET["width"], True, 5)
    safetensors_torch.save_file(resnet.state_dict(), str(root / "resnet.safetensors"))
    return {"root": root, "vit": vit_params, "resnet": resnet}


def apply(model, variables, x, features=False):
    """The model's jitted forward pass in eval mode (one compile instead of op-by-op)."""
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False, features=features))
    return np.asarray(fn(variables, x))


def images(n, size, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- forward passes
def test_vit_npz_logits_and_features_match_torch_reference(files):
    model, variables = from_pretrained("vit_b16", files["root"] / "vit.npz", **TINY_VIT)
    x = images(3, 16)
    want_logits, want_features = torch_vit(files["vit"], x, 2, 4, 4)
    logits = apply(model, variables, x)
    features = apply(model, variables, x, features=True)
    assert logits.shape == (3, 7) and features.shape == (3, 32)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features, want_features, rtol=1e-4, atol=1e-4)


def test_vit_pre_logits_and_big_vision_layout_load_to_the_same_function(tmp_path):
    rng = np.random.default_rng(3)
    p = vit_npz_params(rng, **TINY_VIT, grid=4, classes=6, rep=24)
    p["Transformer/posembed_input/pos_embedding"][:, 0] = 0.0  # big_vision: no [CLS] position.
    x = images(2, 16, seed=4)
    want, _ = torch_vit(p, x, 2, 4, 4)
    # big_vision's layout of the same weights: params/ prefix, linen block names, patch-only
    # top-level pos_embedding, blocks scanned (stacked on a leading depth axis).
    renames = {
        "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
        "LayerNorm_2": "LayerNorm_1",
        "MlpBlock_3": "MlpBlock_0",
    }
    bv, stacked = {}, {}
    for key, value in p.items():
        if key == "Transformer/posembed_input/pos_embedding":
            bv["params/pos_embedding"] = value[:, 1:]
        elif key.startswith("Transformer/encoderblock_"):
            i, rest = key.split("/", 2)[1].split("_")[1], key.split("/", 2)[2]
            for old, new in renames.items():
                rest = rest.replace(old, new)
            stacked.setdefault(rest, {})[int(i)] = value
        else:
            bv["params/" + key] = value
    for rest, layers in stacked.items():
        bv["params/Transformer/encoderblock/" + rest] = np.stack([layers[0], layers[1]])
    np.savez(tmp_path / "vt.npz", **p)
    np.savez(tmp_path / "bv.npz", **bv)
    for name in ("vt.npz", "bv.npz"):
        model, variables = from_pretrained("vit_b16", tmp_path / name, **TINY_VIT)
        assert variables["params"]["pre_logits"]["kernel"].shape == (32, 24)
        np.testing.assert_allclose(apply(model, variables, x), want, rtol=1e-4, atol=1e-4)


def test_vit_position_embedding_resized_bilinearly_with_cls_kept(files):
    model, variables = from_pretrained(
        "vit_b16", files["root"] / "vit.npz", image_size=24, **TINY_VIT
    )
    pe = files["vit"]["Transformer/posembed_input/pos_embedding"]
    got = variables["params"]["Transformer"]["posembed_input"]["pos_embedding"]
    assert got.shape == (1, 1 + 36, 32)
    np.testing.assert_array_equal(got[:, 0], pe[:, 0])
    grid = torch.from_numpy(pe[0, 1:].reshape(4, 4, 32)).permute(2, 0, 1)[None]
    grid = F.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False)
    want = torch.cat([torch.from_numpy(pe[:, :1]), grid[0].permute(1, 2, 0).reshape(1, 36, 32)], 1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    x = images(2, 24)
    want_logits, _ = torch_vit(files["vit"], x, 2, 4, 4, posemb=want)
    np.testing.assert_allclose(apply(model, variables, x), want_logits, rtol=1e-4, atol=1e-4)


def test_resnet_safetensors_logits_and_features_match_torch(files):
    model, variables = from_pretrained(
        "resnet50", files["root"] / "resnet.safetensors", **TINY_RESNET
    )
    x = images(2, 32) * 2.0
    with torch.no_grad():
        want_logits, want_features = files["resnet"](torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(
        apply(model, variables, x), want_logits.numpy(), rtol=1e-4, atol=1e-4
    )
    features = apply(model, variables, x, features=True)
    assert features.shape == (2, 8 * 8 * 4)
    np.testing.assert_allclose(features, want_features.numpy(), rtol=1e-4, atol=1e-4)
    stats = variables["batch_stats"]["layer1_0"]["downsample_1"]
    np.testing.assert_array_equal(
        stats["var"], files["resnet"].layer1[0].downsample[1].running_var.numpy()
    )


def test_resnet18_basic_blocks_match_torch(tmp_path):
    ref = torch_resnet(1, (1, 1, 1, 1), 8, False, 4)
    safetensors_torch.save_file(ref.state_dict(), str(tmp_path / "r18.safetensors"))
    model, variables = from_pretrained(
        "resnet18", tmp_path / "r18.safetensors", width=8, stage_sizes=(1, 1, 1, 1)
    )
    x = images(2, 32, seed=5)
    with torch.no_grad():
        want, _ = ref(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(apply(model, variables, x), want.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name,count",
    # torchvision's published parameter counts (resnet*, vit_b_16 with 1,000 classes).
    [
        ("resnet18", 11_689_512),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("vit_b16", 86_567_656),
    ],
)
def test_real_variants_have_the_published_parameter_counts(name, count):
    model = registry.build_backbone(name, num_classes=1000)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    )
    assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == count


# ----------------------------------------------------------------------------- errors
def test_missing_tensor_error_names_file_key_shape_and_where_published(tmp_path, files):
    state = {
        k: v for k, v in files["resnet"].state_dict().items() if k != "layer1.0.bn2.running_var"
    }
    path = tmp_path / "broken.safetensors"
    safetensors_torch.save_file(state, str(path))
    with pytest.raises(ValueError) as e:
        from_pretrained("resnet50", path, **TINY_RESNET)
    msg = str(e.value)
    assert str(path) in msg and "'layer1.0.bn2.running_var'" in msg and "is missing" in msg
    assert "batch_stats/backbone/layer1_0/bn2/var" in msg and "(8,)" in msg
    assert "huggingface.co/timm/resnet50.tv2_in1k" in msg


def test_shape_mismatch_error_names_both_shapes(files):
    # The tiny file is not a real ViT-B/16: the first mismatch is named with both shapes.
    with pytest.raises(ValueError) as e:
        from_pretrained("vit_b16", files["root"] / "vit.npz")
    msg = str(e.value)
    assert re.search(
        r"parameter 'params/backbone/\S+' \(key '\S+' in the source file\) has "
        r"shape \((\d+, )*32,?\), the model expects shape \((\d+, )*768,?\)",
        msg,
    ), msg
    assert "storage.googleapis.com/vit_models/augreg/B_16-i21k-300ep" in msg


def test_unknown_file_format_and_missing_path_are_named(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a pickle we would ever open")
    with pytest.raises(ValueError, match=r"weights\.pth: unknown format"):
        from_pretrained("resnet50", bad)
    params = {"backbone": {}}
    with pytest.raises(FileNotFoundError, match="does not exist.*download.pytorch.org"):
        pretrained.load_backbone("resnet50", tmp_path / "none.safetensors", params, {})


# ----------------------------------------------------------------------------- converter, loop
def test_convert_cli_writes_orbax_checkpoint_with_same_function(files, tmp_path):
    out = tmp_path / "vit"
    cmd = [sys.executable, "-m", "richft_jax.convert", f"--source={files['root'] / 'vit.npz'}"]
    cmd += ["--format=big_vision_npz", f"--out={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and f"Wrote {out}" in done.stdout, done.stderr
    model, variables = from_pretrained("vit_b16", out, **TINY_VIT)
    x = images(2, 16)
    want, _ = torch_vit(files["vit"], x, 2, 4, 4)
    np.testing.assert_allclose(apply(model, variables, x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"has shape \(.*32,?\), the model expects shape \(.*768"):
        convert.convert(
            files["root"] / "vit.npz", "big_vision_npz", tmp_path / "checked", model="vit_b16"
        )
    assert not (tmp_path / "checked").exists()


def tiny_finetune_config(config_file, data_dir, pretrained_path, **model_kwargs):
    """The paper config on the embedded digits at tiny sizes (the --dry_run path)."""
    c = config_lib.load_config_file(config_file, "dry_run")
    c.data.name, c.data.test_domains, c.data.data_dir = "digits_domains", "syn", str(data_dir)
    c.data.augment, c.data.batch_size_per_domain, c.data.eval_batch_size = "none", 8, 64
    c.data.image_size = None  # The digits' own 32 x 32.
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 2, 1
    c.model.kwargs = model_kwargs
    c.pretrained.path = str(pretrained_path)
    return c


def test_resnet_finetunes_from_converted_checkpoint_with_frozen_bn(files, data_dir, tmp_path):
    out = convert.convert(
        files["root"] / "resnet.safetensors", "torchvision_safetensors", tmp_path / "r50"
    )
    c = tiny_finetune_config("configs/resnet50_dropout.py", data_dir, out, **TINY_RESNET)
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["dropout_rate"] == pytest.approx(0.9) and summary["num_steps"] == 2
    assert np.isfinite(summary["final_train"]["loss"])
    state = checkpoints.restore_state_tree(tmp_path / "run")
    ref = files["resnet"].state_dict()
    # BatchNorm statistics are the checkpoint's, untouched by training (frozen).
    np.testing.assert_array_equal(
        state["batch_stats"]["backbone"]["layer2_0"]["bn1"]["mean"],
        ref["layer2.0.bn1.running_mean"],
    )
    # The backbone started from the checkpoint: two small SGD steps stay close to it.
    kernel = state["params"]["backbone"]["conv1"]["kernel"]
    want = ref["conv1.weight"].numpy().transpose(2, 3, 1, 0)
    assert np.abs(kernel - want).max() < 1e-2 * np.abs(want).max()
    assert state["params"]["head"]["kernel"].shape == (8 * 8 * 4, 10)  # New 10-class head.


def test_vit_finetunes_from_npz_file_with_resized_position_embedding(files, data_dir, tmp_path):
    c = tiny_finetune_config(
        "configs/vit_b16_dropout.py", data_dir, files["root"] / "vit.npz", **TINY_VIT
    )
    train.train_and_evaluate(c, str(tmp_path / "run"))
    state = checkpoints.restore_state_tree(tmp_path / "run")
    pe = state["params"]["backbone"]["Transformer"]["posembed_input"]["pos_embedding"]
    assert pe.shape == (1, 1 + 8 * 8, 32)  # 32 px digits, patch 4: grid 4x4 -> 8x8.
    src = files["vit"]["Transformer/posembed_input/pos_embedding"]
    want = vit.resize_position_embedding(src, 65)
    assert np.abs(pe - want).max() < 1e-2 * np.abs(want).max()
    assert state["params"]["head"]["kernel"].shape == (32, 10)
