"""Feature dropout: rate, inverted scaling, reproducibility from keys, off at eval."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax.models.classifier import Classifier
from richft_jax.models.demo import SmallResNet
from richft_jax.models.layers import feature_dropout


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.95])
def test_rate_and_inverted_scaling(rate):
    x = jnp.full((1000, 1000), 2.0)
    y = np.asarray(feature_dropout(x, rate, jax.random.key(0)))
    dropped = np.mean(y == 0)
    assert abs(dropped - rate) < 0.003
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 2.0 / (1 - rate), rtol=1e-5)
    assert abs(y.mean() - 2.0) < 0.05  # Expectation is preserved.


def test_rate_zero_is_identity_and_rate_one_is_zero():
    x = jax.random.normal(jax.random.key(1), (64, 512))
    np.testing.assert_array_equal(feature_dropout(x, 0.0, jax.random.key(2)), x)
    assert not np.any(np.asarray(feature_dropout(x, 1.0, jax.random.key(2))))


def test_masks_come_from_the_key():
    x = jnp.ones((32, 512))
    a = feature_dropout(x, 0.9, jax.random.key(3))
    b = feature_dropout(x, 0.9, jax.random.key(3))
    c = feature_dropout(x, 0.9, jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.1


def test_rate_is_traced_without_recompiling():
    f = jax.jit(feature_dropout)
    x = jnp.ones((8, 512))
    y1 = f(x, jnp.float32(0.9), jax.random.key(0))
    y2 = f(x, jnp.float32(0.5), jax.random.key(0))
    assert f._cache_size() == 1
    assert np.mean(np.asarray(y1) == 0) > np.mean(np.asarray(y2) == 0)


def test_classifier_dropout_on_in_training_off_in_eval():
    model = Classifier(SmallResNet(widths=(8, 8, 8, 8), feature_dim=64), 10, freeze_bn=True)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    eval_a, feats = model.apply(variables, x, train=False, dropout_rate=0.9)
    eval_b, _ = model.apply(variables, x, train=False, dropout_rate=0.0)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert feats["features"].shape == (4, 64)
    train_a, _ = model.apply(
        variables, x, train=True, dropout_rate=0.9, rngs={"dropout": jax.random.key(5)}
    )
    train_b, _ = model.apply(
        variables, x, train=True, dropout_rate=0.9, rngs={"dropout": jax.random.key(5)}
    )
    train_c, _ = model.apply(
        variables, x, train=True, dropout_rate=0.9, rngs={"dropout": jax.random.key(6)}
    )
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, eval_a)
    assert not np.allclose(train_a, train_c)


def test_rate_schedules_at_chosen_steps():
    from richft_jax.methods.feature_dropout import rate_schedule

    assert [rate_schedule("constant", 0.9, 10)(s) for s in (0, 9, 10, 99)] == [0.9] * 4
    assert [rate_schedule("early", 0.9, 10)(s) for s in (0, 9, 10, 99)] == [0.9, 0.9, 0.0, 0.0]
    linear = rate_schedule("early_linear", 0.8, 10)
    np.testing.assert_allclose([linear(s) for s in (0, 5, 10, 50)], [0.8, 0.4, 0.0, 0.0])
    assert [rate_schedule("late", 0.9, 10)(s) for s in (0, 9, 10, 99)] == [0.0, 0.0, 0.9, 0.9]
    with pytest.raises(ValueError, match="dropout_schedule='sometimes'"):
        rate_schedule("sometimes", 0.9, 10)
