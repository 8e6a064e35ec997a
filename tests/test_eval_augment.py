"""Validation on augmented images (config.data.eval_augment, DomainBed's default): the training
domains' splits go through the training augmentation with fixed keys, the test domain never."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_lib, evaluation, parallel, steps
from richft_jax.data import pipeline, pixels
from richft_jax.tf_cpu import tf as _tf

tf = _tf()
BATCH = 16  # A multiple of the 8 simulated devices; splits of 40 end in a padded batch.


def _logits(w, images):
    """A linear classifier on raw pixels: not invariant to crops, flips or colour jitter."""
    return images.reshape(images.shape[0], -1) @ w


@pytest.fixture(scope="module")
def setup():
    """Three RGB domains (the last one the test domain) labelled by the model's own
    unaugmented predictions, so unaugmented accuracy is 1 and anything else is visible."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(16 * 16 * 3, 5)), jnp.float32)
    splits = []
    for domain in ("a", "b", "c"):
        for split in ("in", "out"):
            images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
            x = pixels.normalize(jnp.asarray(images), "minus_one_one")
            labels = np.asarray(jnp.argmax(_logits(w, x), -1), np.int32)
            splits.append(pipeline.Split(domain, split, domain == "c", images, labels))
    data = pipeline.DomainData("synthetic", ("a", "b", "c"), ("c",), 5, tuple(splits))
    eval_step = jax.jit(steps.make_eval_step(_logits, "minus_one_one"))
    return data, w, eval_step, parallel.make_mesh()


def _config(eval_augment="training_domains", augment="domainbed", seed=0):
    c = config_lib.base_config()
    c.data.eval_augment, c.data.augment, c.seed = eval_augment, augment, seed
    return c


def _evaluate(setup, augment=("none", 0)):
    data, w, eval_step, mesh = setup
    evals = evaluation.evaluate(eval_step, w, data, BATCH, mesh, augment=augment)
    return {(s.domain, s.split): m for s, m in evals}


def test_defaults_none_and_paper_configs_augment_the_training_domains():
    assert evaluation.eval_augmentation(config_lib.base_config(), 300) == ("none", 0)
    assert evaluation.eval_augmentation(config_lib.load_config_file("demo:tiny"), 10) == (
        "none",
        0,
    )
    for name in ("resnet50_dropout", "resnet50_erm", "vit_b16_dropout", "vit_b16_erm"):
        kind, _ = evaluation.eval_augmentation(config_lib.load_config_file(name), 300)
        assert kind == "domainbed", name
    with pytest.raises(ValueError, match="eval_augment='test'"):
        evaluation.eval_augmentation(_config("test"), 0)


def test_seeds_are_fixed_by_run_seed_and_step_label():
    a = evaluation.eval_augmentation(_config(), 300)
    assert a == evaluation.eval_augmentation(_config(), 300)
    assert a != evaluation.eval_augmentation(_config(), 600)
    assert a != evaluation.eval_augmentation(_config(seed=1), 300)
    # No training augmentation: nothing to evaluate through.
    assert evaluation.eval_augmentation(_config(augment="none"), 300) == ("none", 0)


def test_training_domains_evaluated_augmented_reproducibly_test_domain_untouched(setup):
    plain = _evaluate(setup)
    at_300 = evaluation.eval_augmentation(_config(), 300)
    aug = _evaluate(setup, at_300)
    again = _evaluate(setup, evaluation.eval_augmentation(_config(), 300))
    other = _evaluate(setup, evaluation.eval_augmentation(_config(), 600))
    assert aug == again  # Same step label: the same augmented images, the same numbers.
    for key, m in plain.items():
        if key[0] == "c":  # The test domain: exactly the unaugmented evaluation.
            assert aug[key] == m and other[key] == m
        else:  # Labels are the unaugmented predictions: accuracy 1 only without augmentation.
            assert m["accuracy"] == 1.0 and m["count"] == 40
            assert aug[key]["accuracy"] < 1.0 and aug[key]["count"] == 40
            assert aug[key]["loss"] != m["loss"] and other[key]["loss"] != aug[key]["loss"]


@pytest.mark.parametrize("kind", ["domainbed", "flip_crop"])
def test_eval_batches_use_the_training_augmentation(setup, kind):
    data = setup[0]
    split = data.get("a", "out")
    plain = list(pipeline.eval_batches(split, BATCH))
    aug = list(pipeline.eval_batches(split, BATCH, augment=kind, seed=7))
    assert len(aug) == len(plain) == 3
    for index, (p, a) in enumerate(zip(plain, aug, strict=True)):
        assert a["image"].dtype == np.uint8 and a["image"].shape == p["image"].shape
        np.testing.assert_array_equal(a["label"], p["label"])
        np.testing.assert_array_equal(a["mask"], p["mask"])
        # The very function the training batches go through, keyed by (seed, batch index).
        want = pipeline._augment(tf.constant(p["image"]), kind, tf.constant([7, index], tf.int64))
        np.testing.assert_array_equal(a["image"], want.numpy())
        assert not np.array_equal(a["image"], p["image"])


@pytest.mark.parametrize("kind", ["crop", "flip_crop", "domainbed"])
def test_eval_batches_augment_images_of_several_sizes_in_one_process(kind):
    """One process evaluating augmented images of three sizes (runs or datasets of other image
    sizes, in a notebook or a test worker): each batch is exactly its own size's augmentation.
    A shape-generalised trace once lost the static sizes the crop needs, and the third size
    raised."""
    rng = np.random.default_rng(1)
    for size in (8, 12, 16, 8):
        images = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
        split = pipeline.Split("a", "out", False, images, np.zeros(BATCH, np.int32))
        (got,) = pipeline.eval_batches(split, BATCH, augment=kind, seed=3)
        want = pipeline._augment(tf.constant(images), kind, tf.constant([3, 0], tf.int64))
        np.testing.assert_array_equal(got["image"], want.numpy())
