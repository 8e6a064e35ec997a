"""The pure, jitted, data-parallel train step: 1 vs 8 devices, determinism, optimizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from richft_jax import config_lib, parallel
from richft_jax import steps as steps_lib
from richft_jax.models.classifier import Classifier
from richft_jax.models.demo import SmallResNet


def _run(devices, steps=10, rate=0.9, freeze_bn=True, seed=0):
    mesh = parallel.make_mesh(devices)
    model = Classifier(SmallResNet(widths=(8, 8, 16, 16), feature_dim=64), 10, freeze_bn=freeze_bn)
    optim = config_lib.base_config().optim
    optim.lr = 0.05
    optim.head_lr_factor = 10.0
    tx = steps_lib.make_optimizer(optim)
    lrs = steps_lib.learning_rates(optim, steps)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    state = steps_lib.create_train_state(
        variables["params"], variables["batch_stats"], tx, jax.random.PRNGKey(seed)
    )
    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    state = jax.device_put(state, rep)
    step_fn = jax.jit(
        steps_lib.make_train_step(model, tx, "minus_one_one"),
        in_shardings=(rep, shard, rep, rep),
        out_shardings=(rep, rep),
    )
    rng = np.random.default_rng(0)
    losses = []
    for i in range(steps):
        batch = {
            "image": rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, 48).astype(np.int32),
        }
        batch = parallel.global_batch(batch, mesh)
        state, m = step_fn(state, batch, jnp.float32(rate), lrs[i])
        losses.append(float(m.compute()["loss"]))
    return jax.device_get(state.params), jax.device_get(state.batch_stats), losses


def test_one_device_equals_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
    p1, _, l1 = _run(jax.devices()[:1])
    p8, _, l8 = _run(jax.devices())
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # The parameters moved: the comparison is not between two untouched inits.
    p0, _, _ = _run(jax.devices()[:1], steps=0)
    assert not np.allclose(p1["head"]["kernel"], p0["head"]["kernel"])


def test_batchnorm_statistics_with_one_and_eight_devices():
    """Unfrozen BatchNorm (pretraining) normalises over the global batch on any mesh."""
    _, s1, _ = _run(jax.devices()[:1], steps=3, rate=0.0, freeze_bn=False)
    _, s8, _ = _run(jax.devices(), steps=3, rate=0.0, freeze_bn=False)
    # Float32 summation order differs between the meshes (1e-5 after 3 steps); statistics of
    # each device's 6 examples instead of the global 48 would differ by ~1e-1.
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_same_seed_is_bit_identical_and_frozen_bn_stays_frozen():
    pa, sa, la = _run(jax.devices(), steps=4)
    pb, sb, lb = _run(jax.devices(), steps=4)
    assert la == lb
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(a, b)
    _, s0, _ = _run(jax.devices(), steps=0)
    for a, b in zip(jax.tree.leaves(sa), jax.tree.leaves(s0), strict=True):
        np.testing.assert_array_equal(a, b)  # freeze_bn: running statistics untouched.


def test_head_learning_rate_factor_and_step_decay():
    optim = config_lib.base_config().optim
    optim.lr, optim.weight_decay, optim.momentum, optim.head_lr_factor = 0.1, 0.0, 0.0, 10.0
    tx = steps_lib.make_optimizer(optim)
    params = {"head": {"kernel": jnp.ones(2)}, "backbone": {"w": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    lrs = steps_lib.learning_rates(optim, 10)
    updates, opt_state = tx.update(grads, opt_state, params, learning_rate=lrs[0])
    np.testing.assert_allclose(updates["backbone"]["w"], -0.1)
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0)
    schedule = steps_lib.make_schedule(optim, 10)
    np.testing.assert_allclose(
        [schedule(4), schedule(5), schedule(9)], [0.1, 0.01, 0.01], rtol=1e-6
    )
    np.testing.assert_allclose(lrs, [schedule(i) for i in range(10)], rtol=1e-7)
    assert lrs.dtype == np.float32 and lrs.shape == (10,)
    assert isinstance(tx, optax.GradientTransformation)


def test_runs_of_other_lengths_and_rates_compile_one_step():
    """The learning rate is the step's argument: the compiled step (what the persistent cache
    keys on) is the same for every schedule, length and base rate."""
    model = Classifier(SmallResNet(widths=(8, 8, 8, 8), feature_dim=16), 10, freeze_bn=True)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    batch = {"image": jnp.zeros((4, 32, 32, 3), jnp.uint8), "label": jnp.zeros(4, jnp.int32)}
    texts = set()
    for lr, decay_at, num_steps in ((0.05, (0.5,), 10), (0.003, (0.3, 0.6), 900)):
        optim = config_lib.base_config().optim
        optim.lr, optim.decay_at = lr, decay_at
        tx = steps_lib.make_optimizer(optim)
        state = steps_lib.create_train_state(
            variables["params"], variables["batch_stats"], tx, jax.random.PRNGKey(0)
        )
        lrs = steps_lib.learning_rates(optim, num_steps)
        last = lr * optim.decay_factor ** len(decay_at)
        np.testing.assert_allclose([lrs[0], lrs[-1]], [lr, last], rtol=1e-6)
        step = jax.jit(steps_lib.make_train_step(model, tx, "minus_one_one"))
        texts.add(step.lower(state, batch, jnp.float32(0.9), lrs[0]).as_text())
    assert len(texts) == 1


def test_summary_reads_as_the_runs_result(tmp_path):
    from richft_jax import console

    summary = {
        "method": "very_large_dropout",
        "dataset": "digits_domains",
        "test_domains": ["syn"],
        "selected": {"step": 600, "id_accuracy": 0.9123, "ood_accuracy": 0.5187},
        "wall_time_s": 85.0,
    }
    text = "\n".join(console.summary_lines(summary, tmp_path))
    assert "Done in 1m25s: very_large_dropout on digits_domains" in text
    assert "selected step 600" in text and "ID 91.2%  OOD 51.9%" in text
    assert f"python -m richft_jax.report {tmp_path}" in text
    assert f"tensorboard --logdir {tmp_path}" in text


@pytest.mark.parametrize("seed", [0, 7, 2**31 + 5])
def test_keys_are_the_seeds_key_split_in_two(seed):
    """steps.keys (one compiled program per seed) gives jax.random's eager split of the seed's
    key: the init key and the train state's root, whatever the seed's size."""
    init_key, root = steps_lib.keys(ml_collections.ConfigDict({"seed": seed}))
    want = jax.random.split(jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(init_key, want[0])
    np.testing.assert_array_equal(root, want[1])
    assert not np.array_equal(init_key, root)


def test_jit_per_model_keys_models_by_their_fields_and_keeps_the_most_recent(monkeypatch):
    """One jitted function per (model fields, arguments), lists in the fields allowed; equal
    models share it; the least recently used goes first once JIT_PER_MODEL_SIZE are kept."""
    monkeypatch.setattr(steps_lib, "JIT_PER_MODEL_SIZE", 2)
    made = []

    @steps_lib.jit_per_model
    def widths_sum(model, scale):
        made.append((list(model.widths), scale))
        return lambda x: x * (sum(model.widths) * scale)

    a, b, c = (SmallResNet(widths=w, feature_dim=4) for w in ([1, 2], [1, 3], [2, 2]))
    x = jnp.ones(3)
    np.testing.assert_array_equal(widths_sum(a, 2)(x), 6.0)
    np.testing.assert_array_equal(widths_sum(SmallResNet(widths=[1, 2], feature_dim=4), 2)(x), 6.0)
    assert made == [([1, 2], 2)]  # An equal model (another instance) shares the function.
    assert widths_sum(a, 2)._cache_size() == 1  # Traced once.
    np.testing.assert_array_equal(widths_sum(a, 3)(x), 9.0)  # Other arguments: its own.
    np.testing.assert_array_equal(widths_sum(b, 2)(x), 8.0)  # A third: (a, 2), the oldest, goes.
    assert list(widths_sum.cache) == [(repr(a), 3), (repr(b), 2)] and len(made) == 3
    widths_sum(a, 3)
    widths_sum(c, 2)  # Evicts (b, 2), the least recently used, not (a, 3).
    assert len(made) == 4
    widths_sum(a, 3)
    assert len(made) == 4
    widths_sum(b, 2)
    assert made[-1] == ([1, 3], 2) and len(made) == 5
