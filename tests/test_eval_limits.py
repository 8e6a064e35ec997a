"""How much of each split an evaluation round reads: config.data.eval_max_examples for every
split, config.data.eval_train_in_max_examples for the training domains' "in" splits only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_checks, config_lib, evaluation, parallel, results, steps
from richft_jax.data import pipeline

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
            x = pipeline.normalize(jnp.asarray(images), "minus_one_one")
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
    assert config_lib.base_config().data.eval_models_per_pass == 0  # All at once.


@pytest.mark.parametrize("per_pass", [0, 1, 2])
def test_models_in_one_pass_give_each_models_own_rows(setup, per_pass):
    """A round's models stacked (the run's weights and their moving average) give each model
    the values of its own evaluation, with the same limits, in stacking order."""
    data, w, _, mesh = setup
    rng = np.random.default_rng(1)
    trees = [w, w + 0.5 * jnp.asarray(rng.normal(size=w.shape), jnp.float32), -w]
    logits = lambda v, x: _logits(v["params"], x) + v["shift"]  # noqa: E731  (a shared leaf)
    shift = jnp.zeros(5)
    single = jax.jit(steps.make_eval_step(logits, "minus_one_one"))
    many = jax.jit(steps.make_models_eval_step(logits, "minus_one_one", per_pass))
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
