"""The benchmark's train step written in PyTorch, timed in the same process as the JAX one.

Same architectures (the demo's SmallResNet / SmallViT laid out with the Flax module names, so
weights copy across by a fixed rule; ResNet-50 and ViT-B/16 from torchvision / timm when
importable, else the torch.nn versions here), same batch, optimizer (SGD momentum, coupled
weight decay, head lr x factor), frozen BatchNorm statistics, inverted dropout on the
penultimate features, cross-entropy. Variants: eager, channels-last (convnets) and
torch.compile (reported as None when it fails). Imported only when torch is installed
(`pip install -e ".[bench]"`); it imports nothing of the harness (benchmark.py).
"""

import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.measure import peak_rss_growth


# ----------------------------------------------------------------------------- architectures
class BasicBlock(nn.Module):
    """demo.BasicBlock: two 3x3 convs with BatchNorm, projection shortcut when shapes change."""

    def __init__(self, cin: int, features: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, features, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.project = cin != features or stride != 1
        if self.project:
            self.proj_conv = nn.Conv2d(cin, features, 1, stride, 0, bias=False)
            self.proj_bn = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.project:
            x = self.proj_bn(self.proj_conv(x))
        return F.relu(x + y)


class SmallResNet(nn.Module):
    """demo.SmallResNet in torch.nn, module names as Flax's (`stage1_block1.conv1`, ...)."""

    def __init__(
        self,
        widths=(16, 32, 64, 128),
        blocks=(1, 1, 1, 1),
        stem_stride: int = 1,
        feature_dim: int = 512,
    ):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.names, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                name = f"stage{i + 1}_block{j + 1}"
                setattr(self, name, BasicBlock(cin, width, 2 if (i > 0 and j == 0) else 1))
                self.names.append(name)
                cin = width
        self.feature_dim = feature_dim
        if feature_dim:
            self.widen_conv = nn.Conv2d(cin, feature_dim, 1, bias=False)
            self.widen_bn = nn.BatchNorm2d(feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for name in self.names:
            x = getattr(self, name)(x)
        if self.feature_dim:
            x = F.relu(self.widen_bn(self.widen_conv(x)))
        return x.mean(dim=(2, 3))


class Attention(nn.Module):
    """Flax MultiHeadDotProductAttention (query/key/value/out with biases), by SDPA."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        split = lambda y: y.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x))
        )
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class ViT(nn.Module):
    """Pre-LN ViT: demo.SmallViT (mean pooling, widened features; Flax's names) or, with
    `cls_token`, the ViT-B/16 layout of models/vit.py ([CLS] pooling)."""

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 128,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: int = 2,
        feature_dim: int = 512,
        cls_token: bool = False,
    ):
        super().__init__()
        self.depth, self.feature_dim, self.cls_token = depth, feature_dim, cls_token
        self.embedding = nn.Conv2d(3, dim, patch, patch)
        tokens = (image_size // patch) ** 2 + int(cls_token)
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        if cls_token:
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        for i in range(depth):
            setattr(self, f"block{i}_ln1", nn.LayerNorm(dim, eps=1e-6))
            setattr(self, f"block{i}_attn", Attention(dim, heads))
            setattr(self, f"block{i}_ln2", nn.LayerNorm(dim, eps=1e-6))
            setattr(self, f"block{i}_mlp1", nn.Linear(dim, dim * mlp_ratio))
            setattr(self, f"block{i}_mlp2", nn.Linear(dim * mlp_ratio, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        if feature_dim:
            self.widen = nn.Linear(dim, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x).flatten(2).transpose(1, 2)
        if self.cls_token:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embedding
        part = lambda i, name: getattr(self, f"block{i}_{name}")  # noqa: E731
        for i in range(self.depth):
            x = x + part(i, "attn")(part(i, "ln1")(x))
            y = F.gelu(part(i, "mlp1")(part(i, "ln2")(x)), approximate="tanh")
            x = x + part(i, "mlp2")(y)
        x = self.encoder_norm(x)
        x = x[:, 0] if self.cls_token else x.mean(dim=1)
        if self.feature_dim:
            x = F.gelu(self.widen(x), approximate="tanh")
        return x


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride on the 3x3 conv), names as models/resnet.py."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.project = stride != 1 or cin != out
        if self.project:
            self.downsample_0 = nn.Conv2d(cin, out, 1, stride, bias=False)
            self.downsample_1 = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.project:
            x = self.downsample_1(self.downsample_0(x))
        return F.relu(x + y)


class ResNet50(nn.Module):
    """ResNet-50 backbone (2048-d pooled features) when torchvision is not importable."""

    def __init__(self, stage_sizes=(3, 4, 6, 3), width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.names, cin = [], width
        for i, n in enumerate(stage_sizes):
            for j in range(n):
                name = f"layer{i + 1}_{j}"
                setattr(self, name, Bottleneck(cin, width * 2**i, 2 if i > 0 and j == 0 else 1))
                self.names.append(name)
                cin = width * 2**i * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for name in self.names:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def resnet50_backbone() -> nn.Module:
    """torchvision's resnet50 without its fc when importable, else ResNet50 above."""
    try:
        import torchvision  # noqa: PLC0415

        model = torchvision.models.resnet50()
        model.fc = nn.Identity()
        return model
    except Exception:  # noqa: BLE001 (missing, or built against another torch)
        return ResNet50()


def vit_b16_backbone(image_size: int) -> nn.Module:
    """timm's vit_base_patch16_224 without its head when importable, else ViT above."""
    try:
        import timm  # noqa: PLC0415

        return timm.create_model("vit_base_patch16_224", num_classes=0, img_size=image_size)
    except Exception:  # noqa: BLE001
        return ViT(image_size, 16, 768, 12, 12, 4, feature_dim=0, cls_token=True)


def build_backbone(name: str, kwargs: dict, image_size: int) -> nn.Module:
    """The torch twin of the registry's backbone `name` with the config's architecture kwargs
    (config_checks.architecture_kwargs: the callers drop the JAX-only ones)."""
    if name == "small_resnet":
        return SmallResNet(**kwargs)
    if name == "small_vit":
        return ViT(image_size, **kwargs)
    if name == "resnet50":
        return resnet50_backbone()
    if name == "vit_b16":
        return vit_b16_backbone(image_size)
    raise ValueError(
        f"--model: no PyTorch twin of backbone {name!r} (small_resnet, small_vit, resnet50, "
        "vit_b16)."
    )


class Classifier(nn.Module):
    """models.Classifier: backbone -> inverted dropout on the features -> linear head.

    With `freeze_bn`, BatchNorm stays in eval mode (running statistics, affine trained), as
    the JAX classifier does in fine-tuning.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, freeze_bn: bool):
        super().__init__()
        self.backbone, self.freeze_bn = backbone, freeze_bn
        self.head = nn.Linear(feature_dim, num_classes)
        self.dropout_rate = 0.0

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        features = F.dropout(features, self.dropout_rate, self.training)
        return self.head(features)


def feature_dim_of(backbone: nn.Module, image_size: int) -> int:
    """Width of the backbone's output features (one forward pass on zeros)."""
    with torch.no_grad():
        return int(backbone.eval()(torch.zeros(1, 3, image_size, image_size)).shape[-1])


# ----------------------------------------------------------------------------- weights
def state_from_flax(params: dict, batch_stats: dict | None = None) -> dict[str, torch.Tensor]:
    """A torch state_dict from Flax variables whose module names the torch model shares.

    Conv kernels HWIO -> OIHW, Dense kernels transposed, attention's (D, heads, d) kernels
    flattened, LayerNorm/BatchNorm scale -> weight, BatchNorm mean/var -> running_mean/_var.
    """
    out = {}

    def visit(tree: dict, path: tuple[str, ...], stats: bool):
        for name, leaf in tree.items():
            if isinstance(leaf, dict):
                visit(leaf, (*path, name), stats)
                continue
            x = np.asarray(leaf, np.float32)
            module = ".".join(path)
            if stats:
                target = {"mean": "running_mean", "var": "running_var"}[name]
            elif name == "kernel":
                target = "weight"
                if x.ndim == 4:
                    x = x.transpose(3, 2, 0, 1)
                elif x.ndim == 3 and path[-1] == "out":  # (heads, d, D)
                    x = x.reshape(-1, x.shape[-1]).T
                elif x.ndim == 3:  # query/key/value (D, heads, d)
                    x = x.reshape(x.shape[0], -1).T
                else:
                    x = x.T
            elif name == "scale":
                target = "weight"
            elif name == "bias":
                target, x = "bias", x.reshape(-1)
            else:
                target = name
            out[f"{module}.{target}" if module else target] = torch.from_numpy(
                np.ascontiguousarray(x)
            )

    visit(params, (), False)
    visit(batch_stats or {}, (), True)
    return out


def load_flax(model: nn.Module, params: dict, batch_stats: dict | None = None) -> None:
    """Copies Flax variables into `model`; every torch tensor must be matched, and back."""
    state = state_from_flax(params, batch_stats)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"Flax -> torch weights: torch parameters without a Flax value {missing[:5]}, "
            f"Flax values without a torch parameter {unexpected[:5]}."
        )


# ----------------------------------------------------------------------------- the step
def make_optimizer(
    model: Classifier, lr: float, momentum: float, weight_decay: float, head_lr_factor: float
) -> torch.optim.Optimizer:
    """SGD with momentum and coupled weight decay, head lr x factor (steps.make_optimizer)."""
    return torch.optim.SGD(
        [
            {"params": list(model.backbone.parameters()), "lr": lr},
            {"params": list(model.head.parameters()), "lr": lr * head_lr_factor},
        ],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1], as pixels.normalize("minus_one_one"); keeps the memory format."""
    return images.float() / 255.0 * 2.0 - 1.0


def make_train_step(
    model: nn.Module, opt: torch.optim.Optimizer, autocast_dtype: torch.dtype | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`(uint8 images NCHW, labels) -> loss`: forward, cross-entropy, backward, SGD update."""
    device_type = "cuda" if next(model.parameters()).is_cuda else "cpu"

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(normalize(images))
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_per_step(step: Callable, args: tuple, n: int, device: torch.device) -> float:
    """Seconds per step after two warm-up steps (compilation, allocator)."""
    for _ in range(2):
        step(*args)
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step(*args)
    _sync(device)
    return (time.perf_counter() - start) / n


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer, args: tuple) -> int:
    """Bytes of what lives across steps: parameters, buffers, optimizer state, the batch."""
    tensors = [*model.parameters(), *model.buffers(), *args]
    tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_step_bytes(step: Callable, model: nn.Module, opt, args: tuple, device) -> dict:
    """Peak memory of one step and how it was measured.

    CUDA: torch.cuda.max_memory_allocated. CPU: the persistent state (parameters, buffers,
    momentum, batch) plus the process's peak resident-memory growth during the step, measured
    as for the JAX step (measure.peak_rss_growth). torch.profiler's memory events missed
    most of a step's allocations (184 MB for a ResNet-50 step at batch 32).
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(*args)
        torch.cuda.synchronize()
        return {"bytes": int(torch.cuda.max_memory_allocated()), "source": "cuda_max_allocated"}
    growth = peak_rss_growth(lambda: step(*args))
    if growth is None:
        return {"bytes": None, "source": "not measured (no /proc on this OS)"}
    return {
        "bytes": state_bytes(model, opt, args) + growth,
        "source": "state + batch + peak RSS growth during a step",
    }


def saved_activation_mb(
    name: str,
    kwargs: dict,
    image_size: int,
    *,
    dtype: str = "float32",
    dropout_rate: float = 0.9,
    freeze_bn: bool = True,
    batches: tuple[int, int] = (1, 2),
    num_classes: int = 10,
) -> float:
    """MiB per image the train step's forward keeps for backward (the tensors autograd saves,
    counted once per storage), as a slope over two batch sizes: throughput.saved_activation_mb's
    count for the JAX step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    backbone = build_backbone(name, kwargs, image_size)
    model = Classifier(backbone, feature_dim_of(backbone, image_size), num_classes, freeze_bn)
    model.dropout_rate = dropout_rate
    model = model.to(device).train()

    def saved_bytes(batch: int) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        images = torch.zeros(batch, 3, image_size, image_size, dtype=torch.uint8, device=device)
        labels = torch.zeros(batch, dtype=torch.int64, device=device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.type, autocast, enabled=autocast is not None):
                logits = model(normalize(images))
            loss = F.cross_entropy(logits.float(), labels)
        del loss
        return sum(seen.values())

    small, large = batches
    return (saved_bytes(large) - saved_bytes(small)) / (large - small) / 2**20


def make_eval_forward(
    model: nn.Module, autocast_dtype: torch.dtype | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`uint8 images NCHW -> logits` of `model` in eval mode (no dropout, BatchNorm's running
    statistics), without autograd: what an evaluation round computes."""
    model.eval()
    device_type = "cuda" if next(model.parameters()).is_cuda else "cpu"

    @torch.inference_mode()
    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, autocast_dtype, enabled=autocast_dtype is not None):
            return model(normalize(images))

    return forward


def eval_benchmark(
    name: str,
    kwargs: dict,
    images: np.ndarray,
    *,
    steps: int = 10,
    dtype: str = "float32",
    freeze_bn: bool = True,
    num_classes: int = 10,
) -> dict:
    """Images/s of the torch evaluation forward (eval mode, `torch.inference_mode`) on the JAX
    benchmark's uint8 NHWC `images`: eager, and channels-last for the ResNets."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
    nhwc = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    convnet = "resnet" in name
    out = {}
    size = images.shape[1]
    for variant in ["eager", "channels_last"] if convnet else ["eager"]:
        layout = torch.channels_last if variant == "channels_last" else torch.contiguous_format
        backbone = build_backbone(name, kwargs, size)
        model = Classifier(backbone, feature_dim_of(backbone, size), num_classes, freeze_bn)
        forward = make_eval_forward(model.to(device, memory_format=layout), autocast)
        x = nhwc.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        seconds = _time_per_step(forward, (x,), steps, device)
        out[f"torch_eval_{variant}_images_per_s"] = images.shape[0] / seconds
    return out


def benchmark(
    name: str,
    kwargs: dict,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    optim: dict,
    dropout_rate: float = 0.9,
    freeze_bn: bool = True,
    steps: int = 10,
    dtype: str = "float32",
    compile_: bool = True,
    num_classes: int = 10,
) -> dict:
    """Images/s and peak memory of the torch train step, per variant (None: not available).

    `images` uint8 NHWC and `labels` int are the JAX benchmark's batch; `optim` has lr,
    momentum, weight_decay, head_lr_factor.
    """
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    image_size = images.shape[1]
    autocast = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
    batch = images.shape[0]
    nhwc = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    variants = ["eager"]
    convnet = "resnet" in name
    if convnet:
        variants.append("channels_last")
    if compile_:
        variants.append("compile")
    out = {"torch_device": str(device), "torch_version": torch.__version__}
    for variant in variants:
        start = time.perf_counter()
        backbone = build_backbone(name, kwargs, image_size)
        model = Classifier(backbone, feature_dim_of(backbone, image_size), num_classes, freeze_bn)
        model.dropout_rate = dropout_rate
        layout = torch.contiguous_format
        if convnet and variant != "eager":  # compile: on the faster layout
            layout = torch.channels_last
        model = model.to(device, memory_format=layout).train()
        x = nhwc.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        opt = make_optimizer(model, **optim)
        fwd = model
        if variant == "compile":
            fwd = torch.compile(model)
        step = make_train_step(fwd, opt, autocast)
        try:
            seconds = _time_per_step(step, (x, y), steps, device)
            memory = peak_step_bytes(step, model, opt, (x, y), device)
        except Exception as e:  # noqa: BLE001 (torch.compile needs a working toolchain)
            out[f"torch_{variant}_images_per_s"] = None
            out[f"torch_{variant}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        out[f"torch_{variant}_images_per_s"] = batch / seconds
        out[f"torch_{variant}_peak_memory_mb"] = (
            None if memory["bytes"] is None else memory["bytes"] / 2**20
        )
        out["torch_memory_source"] = memory["source"]
        out[f"torch_{variant}_wall_s"] = time.perf_counter() - start  # Compilation included.
    return out
