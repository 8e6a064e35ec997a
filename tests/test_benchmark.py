"""The benchmark (`benchmarks/`, outside the library) runs end to end and reports every number
it promises (no speed asserted), and its PyTorch step is the same computation as the JAX one
(same weights, batch -> same losses)."""

import ast
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from absl import flags

from benchmarks import attention, benchmark, measure, throughput, torch_twins
from richft_jax import config_checks, config_lib, run, steps
from richft_jax.data import pixels

REPO = pathlib.Path(__file__).resolve().parent.parent

TINY = {
    "small_resnet": {"widths": (8, 8, 16, 16), "blocks": (1, 1, 1, 1), "stem_stride": 2},
    "small_vit": {"patch": 8, "dim": 32, "depth": 2, "heads": 4, "mlp_ratio": 2},
}


def test_benchmark_reports_all_measurements(tmp_path, data_dir, monkeypatch):
    """The command's every measurement, through its flags, on the demo ResNet at tiny widths
    (the same code path: its JAX and PyTorch steps are built from the same config)."""
    monkeypatch.setattr(
        throughput, "benchmark_config", _tiny_config(throughput.benchmark_config, "small_resnet")
    )
    out = tmp_path / "bench.json"
    # A 256² matmul for the peak: the same measurement, 1 % of the 2048² one's FLOPs.
    args = ["--batch", "24", "--steps", "2", "--k", "2", "--out", str(out), "--torch"]
    args += ["--peak_size", "256"]
    flag_values = flags.FlagValues()
    benchmark.define_flags(flag_values)
    argv = ["benchmark", *args, "--no-torch_compile", "--data_dir", str(data_dir)]
    flag_values(benchmark.absl_spellings(argv, flag_values))
    rows = benchmark.benchmark_all(flag_values)
    row = rows[0]
    for key in (
        "train_images_per_s_dropout0.0",
        "train_images_per_s_dropout0.9",
        "input_images_per_s",
        "input_over_step",
        "input_images_per_cpu_s",
        "input_cpus_at_step_rate",
        "peak_gflops_per_s",
        "ensemble2_over_2_singles",
        "ensemble2_over_2_singles_one_per_pass",
        "jax_peak_memory_mb",
        "torch_eager_images_per_s",
        "torch_channels_last_images_per_s",
        "torch_eager_peak_memory_mb",
        "jax_over_torch_eager",
        "jax_over_torch_channels_last",
        "jax_saved_activation_mb_per_image",
        "torch_saved_activation_mb_per_image",
        "eval_images_per_s",
        "torch_eval_eager_images_per_s",
        "torch_eval_channels_last_images_per_s",
        "jax_eval_over_torch_eval_eager",
        "jax_eval_over_torch_eval_channels_last",
    ):
        assert row[key] > 0, key
    assert row["jax_eval_over_torch_eval_eager"] == pytest.approx(
        row["eval_images_per_s"] / row["torch_eval_eager_images_per_s"]
    )
    assert row["train_step_gflops"] > 0.01  # XLA's cost analysis counted the convolutions.
    # MFU from the jaxpr's count of the whole step (model_flops), near XLA's CPU count of one
    # device's share times the devices (XLA adds element-wise FLOPs, leaves out padding taps).
    xla_whole_step = row["train_step_gflops"] * row["devices"]
    assert 0.8 <= row["model_gflops_per_step"] / xla_whole_step < 1.6
    assert row["mfu"] == pytest.approx(
        row["model_gflops_per_step"]
        * 1e9
        * row["train_images_per_s_dropout0.9"]
        / 24
        / (row["peak_gflops_per_s"] * 1e9)
    )
    assert 0 < row["mfu"] < 1.5
    # The peak is the better of two measured right before and right after the timed steps.
    assert row["peak_gflops_per_s"] == max(row["peak_gflops_per_s_before_after_steps"])
    assert len(row["peak_gflops_per_s_before_after_steps"]) == 2
    assert row["peak_matmul_size"] == 256
    assert row["devices"] == 8 and row["image_size"] == 32 and row["dtype"] == "float32"
    assert row["input_cpus_at_step_rate"] == pytest.approx(
        row["train_images_per_s_dropout0.9"] / row["input_images_per_cpu_s"]
    )
    assert row["jax_over_torch_eager"] == pytest.approx(
        row["train_images_per_s_dropout0.9"] / row["torch_eager_images_per_s"]
    )
    assert not [k for k in row if k.startswith("torch_compile")]  # --no-torch_compile.
    # CPU: no allocator statistics; both sides measured the same way (resident memory).
    assert (
        row["jax_memory_source"]
        == row["torch_memory_source"]
        == ("state + batch + peak RSS growth during a step")
    )
    assert row["jax_compiled_memory_mb"] > 0
    assert json.loads(out.read_text())[0]["model"] == "small_resnet"


def test_torch_benchmark_variants_and_memory():
    """A tiny ViT: eager only (no channels-last for a transformer); the peak memory of a step
    is at least what persists across steps (parameters, momentum, batch)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    optim = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "head_lr_factor": 10.0}
    out = torch_twins.benchmark(
        "small_vit", TINY["small_vit"], images, np.arange(4), optim=optim, steps=1, compile_=False
    )
    assert out["torch_eager_images_per_s"] > 0
    assert "torch_channels_last_images_per_s" not in out
    backbone = torch_twins.build_backbone("small_vit", TINY["small_vit"], 32)
    params = sum(p.numel() * 4 for p in backbone.parameters())
    assert out["torch_eager_peak_memory_mb"] * 2**20 > 2 * params  # parameters + momentum


def test_saved_activations_are_counted_alike_on_both_sides():
    """What each framework's step keeps for its backward pass, per image: of the same order for
    the same tiny ViT, and less in bfloat16 than in float32 on both sides."""
    kept = {}
    for dtype in ("float32", "bfloat16"):
        bench = throughput.setup("small_vit", 2, 32, dtype, False, 1, TINY["small_vit"])
        kept[dtype] = (
            throughput.saved_activation_mb(bench),
            torch_twins.saved_activation_mb("small_vit", TINY["small_vit"], 32, dtype=dtype),
        )
    jax_f32, torch_f32 = kept["float32"]
    assert 0.5 < jax_f32 / torch_f32 < 2.0, kept
    for side in (0, 1):
        assert 0 < kept["bfloat16"][side] < 0.8 * kept["float32"][side], kept


def test_kept_arrays_are_counted_once_and_views_not_at_all():
    """distinct_output_bytes: an array kept twice counts once; a reshape of a kept array and a
    broadcast scalar (never stored by XLA) count nothing; an input and a real broadcast count."""

    def kept(x):
        y = x * 2.0
        return [y, y, y.reshape(-1), jnp.zeros_like(x), x, jnp.broadcast_to(x[0], x.shape)]

    jaxpr = jax.make_jaxpr(kept)(jnp.ones((4, 8), jnp.float32)).jaxpr
    assert throughput.distinct_output_bytes(jaxpr) == 3 * 4 * 8 * 4  # y, x, the broadcast row


def test_peak_rss_growth_sees_a_transient_allocation():
    """A 256 MB buffer written and freed inside the call is seen; a call that allocates
    nothing reads (almost) nothing."""

    def transient():
        a = np.ones(2**25)  # 256 MB, every page touched.
        return float(a[-1])

    grew = measure.peak_rss_growth(transient)
    assert 250 * 2**20 <= grew <= 320 * 2**20
    assert measure.peak_rss_growth(lambda: None) < 16 * 2**20


def test_unknown_torch_backbone_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        torch_twins.build_backbone("nope", {}, 32)


def _jax_and_torch(name: str, lr: float):
    """The JAX classifier with perturbed BatchNorm statistics, and its torch twin."""
    config = config_lib.load_config_file("configs/demo.py")
    config.model.name, config.model.kwargs = name, {**TINY[name], "feature_dim": 32}
    config.optim.lr, config.optim.schedule = lr, "constant"
    model = run.build_model(config, 10)
    variables = jax.jit(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )()
    rng = np.random.default_rng(1)  # numpy: one jitted jax.random call per shape is slow
    # Statistics away from (0, 1) and non-zero BN shifts: the test sees any mix-up of them.
    stats = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            0.1 * rng.standard_normal(x.shape, np.float32)
            if p[-1].key == "mean"
            else rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
        ),
        variables.get("batch_stats", {}),
    )
    params = jax.tree.map(
        lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32),
        variables["params"],
    )
    kwargs = config_checks.architecture_kwargs(config.model.kwargs)
    torch_backbone = torch_twins.build_backbone(name, kwargs, 32)
    torch_model = torch_twins.Classifier(torch_backbone, 32, 10, config.model.freeze_bn)
    torch_twins.load_flax(torch_model, params, stats)
    return config, model, params, stats, torch_model.train()


@pytest.mark.parametrize("name", ["small_resnet", "small_vit"])
def test_torch_step_computes_the_jax_step(name):
    """Same weights, batch and optimizer at dropout 0: the same losses over three steps (so the
    updates, momentum, weight decay and the head's lr factor agree too) and parameters."""
    config, model, params, stats, torch_model = _jax_and_torch(name, lr=0.05)
    tx = steps.make_optimizer(config.optim)
    state = steps.create_train_state(params, stats, tx, jax.random.PRNGKey(0))
    step = jax.jit(steps.make_train_step(model, tx, "minus_one_one"))
    opt = torch_twins.make_optimizer(
        torch_model, 0.05, config.optim.momentum, config.optim.weight_decay, 10.0
    )
    torch_step = torch_twins.make_train_step(torch_model, opt)
    rng = np.random.default_rng(0)
    jax_losses, torch_losses = [], []
    for _ in range(3):
        images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 6).astype(np.int32)
        state, m = step(
            state, {"image": images, "label": labels}, jnp.float32(0), jnp.float32(0.05)
        )
        jax_losses.append(float(m.compute()["loss"]))
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        torch_losses.append(float(torch_step(x, torch.from_numpy(labels.astype(np.int64)))))
    np.testing.assert_allclose(torch_losses, jax_losses, rtol=2e-4)
    assert abs(jax_losses[2] - jax_losses[0]) > 1e-3  # the steps changed the model
    head = np.asarray(state.params["head"]["kernel"])
    np.testing.assert_allclose(torch_model.head.weight.detach().numpy().T, head, atol=2e-5)
    assert np.abs(head - np.asarray(params["head"]["kernel"])).max() > 1e-3  # it was trained


@pytest.mark.parametrize("name", ["small_resnet", "small_vit"])
def test_torch_eval_forward_computes_the_jax_eval_step(name):
    """Same weights and batch: the torch evaluation forward (eval mode) gives the logits of the
    JAX eval step's forward (BatchNorm's running statistics, no dropout)."""
    _, model, params, stats, torch_model = _jax_and_torch(name, lr=0.05)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    variables = {"params": params, "batch_stats": stats}
    logits = steps.model_logits(model)(variables, pixels.normalize(images, "minus_one_one"))
    torch_model.dropout_rate = 0.9  # Eval mode must not apply it.
    forward = torch_twins.make_eval_forward(torch_model)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_allclose(forward(x).numpy(), np.asarray(logits), rtol=1e-4, atol=1e-4)
    assert not torch_model.training


def test_flax_weights_are_matched_one_to_one():
    """A Flax tree with a parameter the torch model lacks is refused, naming it."""
    _, _, params, stats, torch_model = _jax_and_torch("small_resnet", lr=0.05)
    params = {**params, "extra": {"kernel": np.zeros((2, 2), np.float32)}}
    with pytest.raises(ValueError, match="extra.weight"):
        torch_twins.load_flax(torch_model, params, stats)


def test_profile_ops_names_the_ops_of_a_jitted_step():
    """A traced matmul-heavy function: its dot shows up with positive time per call, and the
    thread-pool bookkeeping events are left out."""
    x = jnp.ones((512, 512), jnp.float32)
    f = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
    f(x).block_until_ready()
    ops = dict(throughput.profile_ops(lambda: f(x).block_until_ready(), 3))
    assert any("dot" in kind for kind in ops), ops
    assert all(ms >= 0 for ms in ops.values()) and sum(ops.values()) > 0
    assert not [k for k in ops if k.startswith(("ThunkExecutor", "$"))]


def test_compile_only_reports_flops_and_memory_without_timing(monkeypatch):
    monkeypatch.setattr(
        throughput, "benchmark_config", _tiny_config(throughput.benchmark_config, "small_resnet")
    )
    row = throughput.benchmark_backbone("small_resnet", 8, 1, 1, compile_only=True)
    assert row["train_step_gflops"] > 0 and row["jax_compiled_memory_mb"] > 0
    assert "train_images_per_s_dropout0.9" not in row and row["remat"] is False


def test_remat_is_refused_for_backbones_without_it():
    with pytest.raises(ValueError, match="--remat: only the published-layout ViTs"):
        throughput.benchmark_config("small_resnet", "float32", remat=True)
    config = throughput.benchmark_config("vit_b16", "float32", remat=True)
    assert config.model.kwargs.remat is True


def _tiny_config(original, name):
    def config(model_name, dtype, remat=False):
        c = original(model_name, dtype, remat)
        c.model.kwargs = TINY[name]
        return c

    return config


def test_argparse_negations_still_parse():
    """`--no-torch` (argparse's spelling, in the docs' commands) is absl's `--notorch`; other
    `--no-...` arguments and non-boolean flags are left for absl to judge."""
    flag_values = flags.FlagValues()
    benchmark.define_flags(flag_values)
    argv = ["b", "--no-torch", "--no-torch_compile", "--no-batch", "--no-such", "--k=2"]
    assert benchmark.absl_spellings(argv, flag_values) == [
        "b",
        "--notorch",
        "--notorch_compile",
        "--no-batch",
        "--no-such",
        "--k=2",
    ]
    flag_values(benchmark.absl_spellings(["b", "--no-torch", "--model=small_vit"], flag_values))
    assert flag_values.torch is False and flag_values.model == ["small_vit"]
    with pytest.raises(flags.IllegalFlagValueError, match="'nope'"):
        flag_values(["b", "--model=small_resnet,nope"])


def test_help_lists_the_flags():
    """`python -m benchmarks.benchmark --help` from the repository root: usage and flags."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.benchmark", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr  # absl's --help exits 1.
    assert "FATAL" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "python -m benchmarks.benchmark" in result.stdout
    for name in ("batch", "steps", "[no]torch", "[no]torch_compile", "compile_only", "profile"):
        assert f"--{name}" in result.stdout, name


def _imports(path: pathlib.Path) -> set[str]:
    """Top-level names of the modules a source file imports anywhere."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_library_imports_neither_torch_nor_the_benchmarks():
    """torch and the benchmark tooling stay outside richft_jax; the twins never import the
    harness (no cycle: benchmark -> torch_twins -> measure)."""
    for path in (REPO / "richft_jax").rglob("*.py"):
        assert not _imports(path) & {"torch", "benchmarks"}, path
    twins = ast.parse((REPO / "benchmarks" / "torch_twins.py").read_text(encoding="utf-8"))
    imported = {
        f"{n.module}.{alias.name}"
        for n in ast.walk(twins)
        if isinstance(n, ast.ImportFrom)
        for alias in n.names
    }
    assert "benchmarks.measure.peak_rss_growth" in imported
    assert not [m for m in imported if m.startswith(("benchmarks.benchmark", "richft_jax"))]


def test_model_flops_counts_matmuls_and_convolutions_forward_and_backward():
    """2 x multiply-adds from the jaxpr: a matmul, a strided convolution (its input and kernel
    gradients are one forward each: the input gradient's inserted holes are not counted), a
    scan (times its length), and ResNet-50 at 224 px as published (4.1 GMACs forward)."""
    a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert throughput.model_flops(jnp.matmul, a, b) == 2 * 3 * 5 * 7
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 16))
    dn = ("NHWC", "HWIO", "NHWC")
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=dn)  # noqa: E731
    forward = 2 * (2 * 4 * 4 * 16) * (4 * 3 * 3)
    assert throughput.model_flops(conv, x, k) == forward
    both = jax.grad(lambda x, k: conv(x, k).sum(), argnums=(0, 1))
    assert throughput.model_flops(both, x, k) == 3 * forward
    scanned = lambda a: jax.lax.scan(lambda c, _: (c @ jnp.ones((5, 5)), None), a, None, 4)[0]  # noqa: E731
    assert throughput.model_flops(scanned, a) == 4 * 2 * 3 * 5 * 5

    config = throughput.benchmark_config("resnet50", "float32")
    model = run.build_model(config, 1000)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    init = lambda: model.init(jax.random.key(0), jnp.zeros(images.shape), train=False)  # noqa: E731
    variables = jax.eval_shape(init)
    apply = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    gflops = throughput.model_flops(apply, variables, images) / 1e9
    assert gflops == pytest.approx(2 * 4.09, rel=0.01)


def test_matmul_peak_is_the_fastest_round(monkeypatch):
    """A round slowed by other work does not lower the peak (nor inflate MFU)."""
    seconds = iter([0.4, 0.1, 0.2])
    monkeypatch.setattr(throughput, "timeit", lambda fn, n: next(seconds))
    assert throughput.matmul_peak(size=64, n=1, rounds=3) == pytest.approx(2 * 64**3 / 0.1)


def test_a_backbone_at_a_git_revision_for_in_process_ab():
    """model_ab --a_rev: side A's backbone class from its module's source at a revision (here
    HEAD, which git has in every clone), under another name; a variant keeps its presets; a
    revision git cannot show is refused naming it."""
    from richft_jax.models import demo, registry  # noqa: PLC0415

    old = throughput.backbone_at("HEAD", "small_resnet")
    assert old is not demo.SmallResNet and old.__module__ == "richft_jax.models.demo@HEAD"
    x = jnp.zeros((2, 32, 32, 3))
    for got, want in zip(
        jax.tree.leaves(jax.eval_shape(lambda: old().init(jax.random.key(0), x, train=False))),
        jax.tree.leaves(
            jax.eval_shape(lambda: demo.SmallResNet().init(jax.random.key(0), x, train=False))
        ),
        strict=True,
    ):
        assert got.shape == want.shape
    vit = throughput.backbone_at("HEAD", "vit_b16")
    assert vit is not registry.BACKBONES["vit_b16"]
    assert (vit.width, vit.depth, vit.mlp_dim, vit.num_heads) == (768, 12, 3072, 12)
    assert vit.__mro__[1].__module__ == "richft_jax.models.vit@HEAD"
    with pytest.raises(ValueError, match=r"--a_rev=no-such-rev: git cannot show richft_jax/models"):
        throughput.backbone_at("no-such-rev", "small_vit")


def test_attention_core_rows_time_the_same_function():
    """Each attention row (the ViT's einsum core, jax.nn.dot_product_attention, PyTorch's
    SDPA) has the einsum core's gradients, and its GFLOP/s is the core's FLOPs over its time."""
    b, t, h, dh = shape = (2, 5, 2, 4)
    result = attention.measure(shape, "float32", 2, 2, torch=True)
    rows = {(r["framework"], r["impl"]): r for r in result["rows"]}
    assert set(rows) == {("jax", "einsum"), ("jax", "xla"), ("torch", "sdpa (cpu)")}
    assert rows["jax", "einsum"]["max_grad_diff_vs_einsum"] == 0.0
    for r in rows.values():
        assert r["max_grad_diff_vs_einsum"] < 1e-5
        flops = 12 * b * h * t * t * dh
        assert r["gflop_per_s"] == pytest.approx(flops / (r["fwd_bwd_ms"] / 1e3) / 1e9)
        expected = r["gflop_per_s"] / result["projection_gflop_per_s"]
        assert r["of_projection_matmul"] == pytest.approx(expected)


def test_attention_implementation_the_backend_lacks_is_a_row_that_says_so(monkeypatch):
    from richft_jax.models import vit  # noqa: PLC0415

    attend = vit.attend

    def without_xla(qkv, attention="einsum"):
        if attention == "xla":
            raise NotImplementedError("no xla attention here")
        return attend(qkv, attention)

    monkeypatch.setattr(vit, "attend", without_xla)
    rows = attention.measure((2, 5, 2, 4), "float32", 1, 1, torch=False)["rows"]
    assert [r["impl"] for r in rows] == ["einsum", "xla"]
    assert rows[1] == {
        "framework": "jax",
        "impl": "xla",
        "error": "NotImplementedError: no xla attention here",
    }
    assert rows[0]["fwd_bwd_ms"] > 0


def test_model_ab_sets_module_constants_for_side_a_only():
    """model_ab --a_set: the named module constants hold inside the block and are restored
    after it, also when it raises; a name no module has is refused naming it."""
    from richft_jax.models import layers  # noqa: PLC0415

    before = layers.ROWS_MIN_SIZE
    with throughput.module_constants({"richft_jax.models.layers.ROWS_MIN_SIZE": 7}):
        assert layers.ROWS_MIN_SIZE == 7
    assert layers.ROWS_MIN_SIZE == before
    with (
        pytest.raises(RuntimeError),
        throughput.module_constants({"richft_jax.models.layers.ROWS_MIN_SIZE": 8}),
    ):
        raise RuntimeError
    assert layers.ROWS_MIN_SIZE == before
    for bad in ("richft_jax.models.layers.ROWS_MIN", "no_such_module.X", "X"):
        with pytest.raises(ValueError, match=f"--a_set: '{bad}' names no module constant"):
            with throughput.module_constants({bad: 1}):
                pass
    assert layers.ROWS_MIN_SIZE == before


def test_augmentation_benchmark_times_this_tree_against_a_revision():
    """benchmarks.augmentation at toy sizes: one row per (code, kind) with positive rates, the
    revision's pipeline calling its own augment module; an unknown revision is named."""
    from benchmarks import augmentation  # noqa: PLC0415 (TensorFlow: this test only)

    rows = augmentation.measure(["crop", "domainbed"], 16, 4, 1, 1, "HEAD")
    assert [(r["code"], r["kind"]) for r in rows] == [
        ("at HEAD", "crop"),
        ("at HEAD", "domainbed"),
        ("this tree", "crop"),
        ("this tree", "domainbed"),
    ]
    assert all(r["images_per_s"] > 0 and r["batch"] == 4 for r in rows)
    old = augmentation.augmenters("HEAD")["at HEAD"]
    assert old.augment.__name__ == "richft_jax.data.augment@HEAD"
    with pytest.raises(ValueError, match="--a_rev=no-such-rev: git cannot show"):
        augmentation.augmenters("no-such-rev")
