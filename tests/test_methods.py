"""The companion methods do what they claim: early/late dropout in and around the ViT blocks,
regularized self-labeling (projection, label correction, reweighting), label noise, and the
end-of-run measurements (feature distortion, layer distances, noise stability)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_lib, parallel, train
from richft_jax import steps as steps_lib
from richft_jax.analysis import feature_distortion as fd
from richft_jax.analysis import noise_stability as ns
from richft_jax.data import pipeline
from richft_jax.methods import feature_dropout, label_noise
from richft_jax.methods import self_labeling as sl
from richft_jax.models import layers as dp
from richft_jax.models.classifier import Classifier
from richft_jax.models.demo import SmallResNet, SmallViT


def _dist(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


# ----------------------------------------------------------------------------- early / late
def test_step_rates_at_chosen_steps_for_block_dropout_and_drop_path():
    early = feature_dropout.step_rates(
        "early", 10, {"feature": 0.9, "block_dropout_rate": 0.1, "drop_path_rate": 0.0}
    )
    assert early(0) == early(9) == {"feature": 0.9, "block_dropout_rate": 0.1}
    assert early(10) == early(50) == {"feature": 0.0, "block_dropout_rate": 0.0}
    late = feature_dropout.step_rates("late", 5, {"feature": 0.0, "drop_path_rate": 0.2})
    assert late(4) == {"feature": 0.0, "drop_path_rate": 0.0}
    assert late(5) == {"feature": 0.0, "drop_path_rate": 0.2}
    linear = feature_dropout.step_rates("early_linear", 4, {"feature": 0.0, "drop_path_rate": 0.4})
    decayed = [linear(s)["drop_path_rate"] for s in (0, 1, 2, 4)]
    np.testing.assert_allclose(decayed, [0.4, 0.3, 0.2, 0.0])
    np.testing.assert_allclose(dp.depth_rates(0.2, 5), [0.0, 0.05, 0.1, 0.15, 0.2], atol=1e-7)
    np.testing.assert_allclose(dp.depth_rates(0.3, 1), [0.3])


def test_drop_path_drops_whole_examples_with_inverted_scaling():
    x = jnp.ones((4000, 3, 5))
    y = np.asarray(dp.drop_path(x, 0.3, jax.random.key(0)))
    per_example = y.reshape(4000, -1)
    assert np.all(per_example.min(1) == per_example.max(1))  # All of an example, or none.
    assert abs(np.mean(per_example[:, 0] == 0) - 0.3) < 0.03
    np.testing.assert_allclose(per_example[per_example[:, 0] != 0], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(dp.drop_path(x, 0.0, jax.random.key(0)), x)


def test_vit_block_dropout_and_drop_path_are_traced_and_take_effect():
    model = Classifier(SmallViT(patch=8, dim=16, depth=3, heads=2, feature_dim=32), 10)
    x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)

    @jax.jit
    def forward(v, rates, key):
        out = model.apply(v, x, train=True, backbone_rates=rates, rngs={"dropout": key})
        return out[0]

    clean = model.apply(variables, x, train=False)[0]
    key = jax.random.key(2)
    zero = forward(variables, {"block_dropout_rate": 0.0, "drop_path_rate": 0.0}, key)
    block = forward(variables, {"block_dropout_rate": 0.5, "drop_path_rate": 0.0}, key)
    path = forward(variables, {"block_dropout_rate": 0.0, "drop_path_rate": 0.5}, key)
    assert forward._cache_size() == 1  # Three rates, one compilation.
    np.testing.assert_allclose(zero, clean, rtol=1e-5, atol=1e-5)
    assert not np.allclose(block, clean, atol=1e-3)
    assert not np.allclose(path, clean, atol=1e-3)


# ----------------------------------------------------------------------------- distance constraints
def test_declared_stages_give_radii_growing_by_gamma():
    model = Classifier(SmallResNet(widths=(8, 8, 8, 8), feature_dim=16), 10)
    stages = sl.backbone_stages(model)
    assert [n for n, _ in stages] == ["stem", "stage1", "stage2", "stage3", "stage4", "widen"]
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    radii = sl.projection_radii(params, stages, 2.0, 1.5, 3.0)
    assert radii["backbone"]["stem_conv"]["kernel"] == 2.0
    assert radii["backbone"]["stage2_block1"]["conv1"]["kernel"] == pytest.approx(2.0 * 1.5**2)
    assert radii["backbone"]["widen_bn"]["scale"] == pytest.approx(2.0 * 1.5**5)
    assert radii["head"]["kernel"] == 3.0 and radii["head"]["bias"] == float("inf")

    vit = Classifier(SmallViT(patch=8, dim=16, depth=2, heads=2, feature_dim=0), 10)
    vit_stages = sl.backbone_stages(vit)
    assert [n for n, _ in vit_stages] == ["embedding", "block0", "block1", "encoder_norm"]
    vparams = vit.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    vradii = sl.projection_radii(vparams, vit_stages, 1.0, 2.0, None)
    assert vradii["backbone"]["pos_embedding"] == 1.0  # On the input side: stage 0.
    assert vradii["backbone"]["block1_mlp2"]["kernel"] == 4.0
    assert vradii["head"]["kernel"] == float("inf")  # No head bound configured.


def test_projection_puts_every_layer_within_its_radius_and_leaves_inside_ones_unchanged():
    rng = np.random.default_rng(0)
    anchor = {"a": rng.normal(size=(4, 5)), "b": rng.normal(size=(7,)), "c": rng.normal(size=3)}
    anchor = jax.tree.map(jnp.asarray, anchor)
    step = {"a": 10.0, "b": 0.01, "c": 3.0}  # a and c move far, b barely.
    params = {k: anchor[k] + step[k] * rng.normal(size=anchor[k].shape) for k in anchor}
    radii = {"a": 1.0, "b": 1.0, "c": 2.0}
    projected = sl.project(params, anchor, radii)
    for k in anchor:
        assert _dist(projected[k], anchor[k]) <= radii[k] * (1 + 1e-6)
    np.testing.assert_array_equal(projected["b"], params["b"])  # Inside: untouched.
    for k in ("a", "c"):  # Outside: on the sphere, in the same direction.
        assert _dist(params[k], anchor[k]) > radii[k]
        assert _dist(projected[k], anchor[k]) == pytest.approx(radii[k], rel=1e-5)
        d_old = np.ravel(params[k] - anchor[k])
        d_new = np.ravel(projected[k] - anchor[k])
        assert np.dot(d_old, d_new) / np.linalg.norm(d_old) / np.linalg.norm(d_new) > 1 - 1e-6


def test_anchor_is_the_pretrained_point_with_a_zero_head():
    params = {"backbone": {"w": jnp.ones(3)}, "head": {"kernel": jnp.ones((3, 2))}}
    anchor = sl.anchor_params(params)
    np.testing.assert_array_equal(anchor["backbone"]["w"], 1.0)
    np.testing.assert_array_equal(anchor["head"]["kernel"], 0.0)
    dists = sl.layer_distances(params, anchor)
    assert dists == {"backbone/w": 0.0, "head/kernel": pytest.approx(np.sqrt(6.0))}


# ----------------------------------------------------------------------------- labels
def test_correction_flips_only_confident_disagreeing_labels():
    logits = jnp.array(
        [
            [0.0, 0.0, 9.0, 0.0],  # confident 2, label 2: agrees, kept
            [0.0, 0.0, 0.0, 9.0],  # confident 3, label 1: corrected to 3
            [1.0, 0.6, 0.0, 0.0],  # predicts 0 (p < 0.9), label 3: kept
            [0.0, 9.0, 0.0, 0.0],  # confident 1, label 0: corrected to 1
        ]
    )
    labels = jnp.array([2, 1, 3, 0])
    np.testing.assert_array_equal(sl.correct_labels(logits, labels, 0.9), [2, 3, 3, 1])
    # A stricter threshold than the confidence (p ~ 0.9996) changes nothing.
    np.testing.assert_array_equal(sl.correct_labels(logits, labels, 0.99999), labels)


def test_reweighting_weights_sum_to_one_and_favour_low_loss_examples():
    losses = jnp.array([0.1, 2.0, 0.5, 5.0])
    w = np.asarray(sl.reweight(losses, 2.0))
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    assert list(np.argsort(-w)) == [0, 2, 1, 3]  # Lower loss, larger weight.
    assert w[0] / w[1] == pytest.approx(np.exp((2.0 - 0.1) / 2.0), rel=1e-5)


def test_label_transform_switches_on_at_its_start_steps():
    cfg = config_lib.base_config().self_labeling
    assert sl.make_label_transform(cfg) is None
    cfg.reweight_start, cfg.correction_start = 3, 5
    transform = jax.jit(sl.make_label_transform(cfg))
    logits = jnp.array([[9.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels = jnp.array([1, 1, 1])
    before, w_before = transform(logits, labels, jnp.int32(2))
    np.testing.assert_array_equal(before, labels)
    np.testing.assert_allclose(w_before, 1 / 3)
    mid, w_mid = transform(logits, labels, jnp.int32(3))
    np.testing.assert_array_equal(mid, labels)
    assert w_mid[0] < w_mid[1] < w_mid[2] and float(w_mid.sum()) == pytest.approx(1.0)
    after, _ = transform(logits, labels, jnp.int32(5))
    np.testing.assert_array_equal(after, [0, 1, 1])


# ----------------------------------------------------------------------------- label noise
@pytest.mark.parametrize("kind", ["symmetric", "pairwise"])
def test_noise_flips_exactly_the_configured_fraction(kind):
    labels = (np.arange(1000) % 10).astype(np.int32)
    noisy = label_noise.corrupt_labels(labels, 10, kind, 0.3, np.random.default_rng(0))
    changed = noisy != labels
    assert changed.sum() == 300 and noisy.dtype == labels.dtype
    assert noisy.min() >= 0 and noisy.max() < 10
    shifts = (noisy[changed] - labels[changed]) % 10
    if kind == "pairwise":
        assert np.all(shifts == 1)  # Class-dependent: y -> y + 1.
    else:
        assert set(shifts) == set(range(1, 10))  # Every other class receives some.
    again = label_noise.corrupt_labels(labels, 10, kind, 0.3, np.random.default_rng(0))
    other = label_noise.corrupt_labels(labels, 10, kind, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(noisy, again)
    assert np.any(noisy != other)


def test_noise_goes_only_into_the_training_domains_in_splits():
    def split(domain, name, test):
        labels = (np.arange(200) % 5).astype(np.int32)
        return pipeline.Split(domain, name, test, np.zeros((200, 2, 2, 3), np.uint8), labels)

    splits = tuple(split(d, s, d == "c") for d in ("a", "b", "c") for s in ("in", "out"))
    data = pipeline.DomainData("toy", ("a", "b", "c"), ("c",), 5, splits)
    noisy = label_noise.apply_label_noise(data, "symmetric", 0.25, seed=0)
    for before, after in zip(data.splits, noisy.splits, strict=True):
        flipped = np.mean(before.labels != after.labels)
        expected = 0.25 if (before.split == "in" and not before.is_test_domain) else 0.0
        assert flipped == expected, (before.domain, before.split)
    # The two training domains get different draws.
    assert np.any(noisy.get("a", "in").labels != noisy.get("b", "in").labels)
    assert label_noise.apply_label_noise(data, "none", 0.0, 0) is data
    with pytest.raises(ValueError, match="config.label_noise.kind='sometimes'"):
        label_noise.apply_label_noise(data, "sometimes", 0.1, 0)


# ----------------------------------------------------------------------------- measurements
def test_feature_distortion_metrics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    same = fd.distortion(x, x)
    assert same == pytest.approx({"relative_l2": 0.0, "cosine": 1.0, "cka": 1.0})
    doubled = fd.distortion(x, 2 * x)
    assert doubled == pytest.approx({"relative_l2": 1.0, "cosine": 1.0, "cka": 1.0})
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    rotated = fd.distortion(x, x @ q)
    assert rotated["cka"] == pytest.approx(1.0) and rotated["cosine"] < 0.5  # CKA: rotation-blind.
    assert fd.distortion(x, rng.normal(size=(300, 16)))["cka"] < 0.2
    with pytest.raises(ValueError, match="feature shapes differ"):
        fd.distortion(x, x[:, :8])


def test_noise_stability_grows_with_the_noise():
    def logits_fn(v, x):
        return x @ v["params"]["w"]

    rng = np.random.default_rng(0)
    variables = {"params": {"w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}}
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    key = jax.random.key(0)
    for target in ("input", "weights"):
        sigmas = (0.0, 0.01, 0.1)
        values = [ns.noise_stability(logits_fn, variables, x, s, key, target) for s in sigmas]
        assert values[0] == 0.0 and 0 < values[1] < values[2]
        assert values[2] == pytest.approx(10 * values[1], rel=1e-3)  # Linear model: linear.
    with pytest.raises(ValueError, match="target='bias'"):
        ns.noise_stability(logits_fn, variables, x, 0.1, key, "bias")


# ----------------------------------------------------------------------------- the train step
def _train(radii_fn, steps=4, lr=0.5):
    mesh = parallel.make_mesh()
    model = Classifier(SmallResNet(widths=(8, 8, 8, 8), feature_dim=16), 10, freeze_bn=True)
    optim = config_lib.base_config().optim
    optim.lr, optim.momentum = lr, 0.0
    tx = steps_lib.make_optimizer(optim)
    lrs = steps_lib.learning_rates(optim, steps)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params = variables["params"]
    radii = radii_fn(model, params)
    cfg = config_lib.base_config().self_labeling
    cfg.reweight_start, cfg.correction_start = 0, 2
    state = steps_lib.create_train_state(
        params,
        variables["batch_stats"],
        tx,
        jax.random.PRNGKey(0),
        {"anchor": sl.anchor_params(params)} if radii is not None else {},
    )

    def post_update(params, extras, steps_done):
        if radii is None:
            return params, extras
        return sl.project(params, extras["anchor"], radii), extras

    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    step_fn = jax.jit(
        steps_lib.make_train_step(
            model,
            tx,
            "minus_one_one",
            label_transform=sl.make_label_transform(cfg),
            post_update=post_update,
        ),
        in_shardings=(rep, shard, rep, rep),
        out_shardings=(rep, rep),
    )
    rng = np.random.default_rng(0)
    state = jax.device_put(state, rep)
    for i in range(steps):
        batch = {
            "image": rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, 32).astype(np.int32),
        }
        batch = parallel.global_batch(batch, mesh)
        state, m = step_fn(state, batch, {"feature": jnp.float32(0)}, lrs[i])
        assert np.isfinite(float(m.compute()["loss"]))
    return jax.device_get(params), jax.device_get(state.params), radii


def test_params_stay_within_their_radii_during_training():
    def radii_fn(model, params):
        return sl.projection_radii(params, sl.backbone_stages(model), 0.002, 1.2, 0.3)

    start, end, radii = _train(radii_fn)
    _, free, _ = _train(lambda model, params: None)
    anchor = sl.anchor_params(start)
    dists = sl.layer_distances(end, anchor)
    free_dists = sl.layer_distances(free, anchor)
    flat_radii = {
        "/".join(p.key for p in path): r
        for path, r in jax.tree_util.tree_flatten_with_path(radii)[0]
    }
    for name, d in dists.items():
        assert d <= flat_radii[name] * (1 + 1e-5) + 1e-7, name
    # Without the projection the same steps leave the balls: the hook is what keeps them in.
    outside = [n for n in dists if free_dists[n] > flat_radii[n] * 1.01]
    assert len(outside) >= 5 and "head/kernel" in outside
    # ...and with it, a layer pushed out by the last update sits on its sphere: the projection
    # was active at the end (others may have been moved back inside by momentum).
    on_sphere = [n for n in dists if dists[n] == pytest.approx(flat_radii[n], rel=1e-4)]
    assert on_sphere


# ----------------------------------------------------------------------------- configs, end to end
def _tiny(config_arg, data_dir, **overrides):
    c = config_lib.load_config_file(config_arg)
    c.data.data_dir = str(data_dir)
    c.pretrained.path = None  # From the init: these runs check the hooks, not accuracy.
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 4, 4
    c.data.batch_size_per_domain = 8
    c.data.eval_batch_size, c.data.eval_max_examples, c.measure.max_examples = 64, 64, 64
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def test_rsl_config_with_label_noise_runs_and_writes_its_measurements(data_dir, tmp_path):
    c = _tiny("configs/demo_rsl.py:tiny,noisy", data_dir)
    c.self_labeling.radius, c.self_labeling.head_radius = 0.05, 0.5
    assert c.label_noise.kind == "symmetric" and c.label_noise.rate == 0.2
    assert c.self_labeling.reweight_start == 0 and c.self_labeling.correction_start == 1
    summary = train.train_and_evaluate(c, str(tmp_path / "rsl"))
    assert summary["method"] == "rsl_noisy20" and summary["config_name"] == "demo_rsl_tiny_noisy"
    dist = summary["layer_distances"]
    assert dist["head/kernel"] <= 0.5 * (1 + 1e-5)
    assert dist["backbone/stem_conv/kernel"] <= 0.05 * (1 + 1e-5)  # Stage 0: radius D.
    assert all(d <= 0.05 * 1.5**5 * (1 + 1e-5) for n, d in dist.items() if "backbone" in n)
    assert max(dist.values()) > 0  # It trained.
    fdist = summary["feature_distortion"]
    assert set(fdist) == {"id", "ood", "splits"} and len(fdist["splits"]) == 8
    assert 0 < fdist["id"]["relative_l2"] and -1 <= fdist["ood"]["cosine"] <= 1
    stab = summary["noise_stability"]["ood"]
    assert stab["input_sigma_0.1"] > stab["input_sigma_0.01"] > 0


def test_vit_early_and_late_configs_schedule_their_rates(data_dir, tmp_path):
    early = _tiny("configs/demo_early_dropout.py:tiny,vit", data_dir)
    s = train.train_and_evaluate(early, str(tmp_path / "early"))
    assert s["final_train"]["dropout_rate"] == 0.0 and s["final_train"]["block_dropout_rate"] == 0.0
    late = _tiny("configs/demo_late_dropout.py:tiny,vit", data_dir)
    s = train.train_and_evaluate(late, str(tmp_path / "late"))
    assert s["final_train"]["dropout_rate"] == 0.9 and s["final_train"]["drop_path_rate"] == 0.1
    assert s["method"] == "late_dropout" and np.isfinite(s["final_train"]["loss"])


def test_block_rates_on_a_backbone_without_them_are_refused(data_dir, tmp_path):
    c = _tiny("configs/demo.py:tiny", data_dir, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="config.drop_path_rate=0.1: backbone 'small_resnet'"):
        train.train_and_evaluate(c, str(tmp_path / "bad"))
    c = _tiny("configs/demo_rsl.py:tiny", data_dir)
    c.self_labeling.gamma = 0.0
    with pytest.raises(ValueError, match="config.self_labeling.gamma=0.0"):
        train.train_and_evaluate(c, str(tmp_path / "bad2"))
