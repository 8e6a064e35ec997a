"""How much of each split an evaluation round reads: config.data.eval_max_examples for every
split, config.data.eval_train_in_max_examples for the training domains' "in" splits only."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_checks, config_lib, evaluation, parallel, results, steps
from richft_jax.data import pipeline, pixels

BATCH = 16  # A multiple of the 8 simulated devices.
N, RIGHT = 40, 10  # Examples per split; the model gets exactly the first RIGHT of each right.


def _logits(w, images):
    return images.reshape(images.shape[0], -1) @ w


@pytest.fixture(scope="module")
def setup():
    """Three domains ("c" the test domain) whose labels agree with the model on the first RIGHT
    examples of every split only, so a split's accuracy tells how many examples were read."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 5)), jnp.float32)
    splits = []
    for domain in ("a", "b", "c"):
        for split in ("in", "out"):
            images = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
            x = pixels.normalize(jnp.asarray(images), "minus_one_one")
            labels = np.array(jnp.argmax(_logits(w, x), -1), np.int32)
            labels[RIGHT:] = (labels[RIGHT:] + 1) % 5  # Wrong from RIGHT on.
            splits.append(pipeline.Split(domain, split, domain == "c", images, labels))
    data = pipeline.DomainData("synthetic", ("a", "b", "c"), ("c",), 5, tuple(splits))
    return data, w, jax.jit(steps.make_eval_step(_logits, "minus_one_one")), parallel.make_mesh()


def _evaluate(setup, max_examples=None, train_in_max=None):
    data, w, eval_step, mesh = setup
    evals = evaluation.evaluate(
        eval_step, w, data, BATCH, mesh, max_examples, train_in_max=train_in_max
    )
    return {(s.domain, s.split): (m["count"], m["accuracy"]) for s, m in evals}


def test_default_reads_every_example_of_every_split(setup):
    got = _evaluate(setup)
    assert len(got) == 6
    for count, accuracy in got.values():
        assert count == N and accuracy == pytest.approx(RIGHT / N)


def test_train_in_limit_reads_only_the_training_domains_in_splits_first_examples(setup):
    got = _evaluate(setup, train_in_max=RIGHT)
    for (domain, split), (count, accuracy) in got.items():
        if domain != "c" and split == "in":
            assert (count, accuracy) == (RIGHT, pytest.approx(1.0))
        else:  # ID (training domains' out), OOD and the test domain's out: all of them.
            assert (count, accuracy) == (N, pytest.approx(RIGHT / N))
    # With both limits, the smaller one holds for the training domains' in splits.
    both = _evaluate(setup, max_examples=20, train_in_max=RIGHT)
    assert both[("a", "in")] == (RIGHT, pytest.approx(1.0))
    assert both[("a", "out")] == (20, pytest.approx(RIGHT / 20))
    assert both[("c", "in")] == (20, pytest.approx(RIGHT / 20))


def test_train_in_limit_zero_leaves_those_splits_out_and_selection_unchanged(setup):
    data, w, eval_step, mesh = setup
    skipped = _evaluate(setup, train_in_max=0)
    assert set(skipped) == {("a", "out"), ("b", "out"), ("c", "in"), ("c", "out")}
    full = _evaluate(setup)
    assert all(skipped[k] == full[k] for k in skipped)
    # The rows the selection reads: ID and OOD the same; the training accuracy is unknown.
    meta = {"step": 1, "method": "erm", "seed": 0}
    rows_full = results.eval_rows(evaluation.evaluate(eval_step, w, data, BATCH, mesh), **meta)
    rows_skip = results.eval_rows(
        evaluation.evaluate(eval_step, w, data, BATCH, mesh, train_in_max=0), **meta
    )
    a = results.select_training_domain_validation(rows_full, "erm")["selected"]
    b = results.select_training_domain_validation(rows_skip, "erm")["selected"]
    assert a["id_accuracy"] == b["id_accuracy"] and a["ood_accuracy"] == b["ood_accuracy"]
    assert a["id_train_accuracy"] == pytest.approx(RIGHT / N)
    assert np.isnan(b["id_train_accuracy"])


def test_one_pass_packs_the_splits_back_to_back_with_one_padded_batch(setup):
    """pipeline.eval_stream: every example read once, split after split, as eval_batches gives
    it (augmented ones too); every batch full but the last; each row one-hot in its split."""
    data = setup[0]
    parts = [
        (s, RIGHT + 3 if s.split == "in" else None, "none" if s.is_test_domain else "flip_crop", i)
        for i, s in enumerate(data.splits)
    ]
    batches = list(pipeline.eval_stream(parts, BATCH))
    want = [
        (b["image"][b["mask"]], b["label"][b["mask"]], np.full(b["mask"].sum(), i))
        for i, (split, limit, kind, seed) in enumerate(parts)
        for b in pipeline.eval_batches(split, BATCH, limit, kind, seed)
    ]
    images, labels, index = (np.concatenate(column) for column in zip(*want, strict=True))
    total = 3 * (RIGHT + 3) + 3 * N
    assert len(labels) == total and len(batches) == -(-total // BATCH)
    assert all(len(b["label"]) == BATCH == len(b["image"]) for b in batches)
    segment = np.concatenate([b["segment"] for b in batches])
    assert segment.shape == (len(batches) * BATCH, len(parts))
    assert (segment[:total].sum(1) == 1).all() and not segment[total:].any()  # Padding: none.
    np.testing.assert_array_equal(segment[:total].argmax(1), index)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:total], images)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:total], labels)
    flipped = [b["image"] for b in pipeline.eval_batches(data.splits[0], BATCH, RIGHT + 3)]
    assert not np.array_equal(images[: RIGHT + 3], flipped[0][: RIGHT + 3])  # Augmented.


def test_config_defaults_and_checks():
    assert config_lib.base_config().data.eval_train_in_max_examples is None  # DomainBed: all.
    for name in ("resnet50_dropout", "resnet50_erm", "vit_b16_dropout", "vit_b16_erm"):
        # trainv2.py never evaluates the training domains' in splits.
        assert config_lib.load_config_file(name).data.eval_train_in_max_examples == 0
    assert config_lib.load_config_file("demo").data.eval_train_in_max_examples == 500
    c = config_lib.base_config()
    c.data.eval_train_in_max_examples = -1
    c.data.eval_max_examples = -2
    c.data.eval_models_per_pass = -1
    messages = [str(e) for e in config_checks.config_errors(c)]
    assert any("config.data.eval_train_in_max_examples=-1 must be >= 0" in m for m in messages)
    assert any("config.data.eval_max_examples=-2 must be >= 0" in m for m in messages)
    assert any("config.data.eval_models_per_pass=-1 must be >= 0" in m for m in messages)
    assert config_lib.base_config().data.eval_models_per_pass == 0  # The backend's choice.


@pytest.mark.parametrize("on_mesh", [False, True])
@pytest.mark.parametrize("per_pass", [0, 1, 2])
def test_models_in_one_pass_give_each_models_own_rows(setup, per_pass, on_mesh):
    """A round's models stacked (the run's weights and their moving average) give each model
    the values of its own evaluation, with the same limits, in stacking order (also run per
    device on the batch's mesh, as the loop does)."""
    data, w, _, mesh = setup
    rng = np.random.default_rng(1)
    trees = [w, w + 0.5 * jnp.asarray(rng.normal(size=w.shape), jnp.float32), -w]
    logits = lambda v, x: _logits(v["params"], x) + v["shift"]  # noqa: E731  (a shared leaf)
    shift = jnp.zeros(5)
    single = jax.jit(steps.make_eval_step(logits, "minus_one_one"))
    many_mesh = mesh if on_mesh else None
    many = jax.jit(steps.make_models_eval_step(logits, "minus_one_one", per_pass, many_mesh))
    stacked = {"params": jnp.stack(trees), "shift": shift}
    got = evaluation.evaluate_models(many, stacked, 3, data, BATCH, mesh, train_in_max=RIGHT)
    assert len(got) == 3
    accuracies = set()
    for tree, evals in zip(trees, got, strict=True):
        own = evaluation.evaluate(
            single, {"params": tree, "shift": shift}, data, BATCH, mesh, train_in_max=RIGHT
        )
        assert [s for s, _ in evals] == [s for s, _ in own]
        for (_, m), (_, o) in zip(evals, own, strict=True):
            assert m["count"] == o["count"] and m["accuracy"] == o["accuracy"]
            assert m["loss"] == pytest.approx(o["loss"], rel=1e-5)
        accuracies.add(tuple(m["accuracy"] for _, m in evals))
    assert len(accuracies) == 3  # Three different models, three different sets of rows.


def test_stacked_convolutional_models_run_each_devices_share_of_the_batch():
    """Vmapped over stacked models, convolutions become grouped ones, and XLA's partitioner
    gathered the whole batch onto every device before each (every device computing all of
    it). On the batch's mesh the models eval step gathers nothing and each convolution sees the
    device's share, with the same metrics as without the mesh."""
    mesh = parallel.make_mesh()
    model = nn.Sequential(
        [nn.Conv(4, (3, 3)), nn.relu, nn.Conv(4, (3, 3)), lambda x: x.mean((1, 2))]
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8)
    batch = {"image": images, "label": np.arange(BATCH) % 4, "segment": np.ones((BATCH, 1))}
    batch = parallel.global_batch(batch, mesh)
    keys = jax.random.split(jax.random.key(0), 2)
    params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)))["params"])(keys)
    variables = jax.device_put({"params": params}, parallel.replicated(mesh))
    logits = lambda v, x: model.apply(v, x)  # noqa: E731
    plain, per_device = (
        jax.jit(steps.make_models_eval_step(logits, "minus_one_one", 0, m)) for m in (None, mesh)
    )
    text = per_device.lower(variables, batch).compile().as_text()
    assert "all-gather" not in text
    share = BATCH // len(jax.devices())
    convolutions = re.findall(r"= f32\[(\d+),[^]]*\][^ ]* convolution\(", text)
    assert convolutions and set(convolutions) == {str(share)}, convolutions
    want, got = plain(variables, batch), per_device(variables, batch)  # Per model: a K axis.
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6), got, want)
    assert np.asarray(got.count).tolist() == [[BATCH], [BATCH]]  # [models, splits].
