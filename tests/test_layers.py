"""The shared layers' parameter-gradient sums (models/layers.py: scale_bias, broadcast_rows),
FrozenBatchNorm and the stem's max-pool: the same function, gradients and jvps as the plain
expression, nn.BatchNorm and nn.max_pool, with the parameters' gradients reduced over 2-D rows
on a CPU where the array is large enough."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax.models import layers


def _reductions_to_d(fn, *args) -> list[str]:
    """The `dimensions` of the compiled function's reductions to a (32,) float32 array."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(r"f32\[32\]\{0\} reduce\(\S+ \S+\), dimensions=\{([\d,]+)\}", hlo)


def test_scale_and_bias_gradients_are_sums_over_rows(monkeypatch):
    """scale_bias is x * s + b with the same gradients and jvps; its parameters' gradients are
    reductions over the rows of the (batch * tokens, D) array from ROWS_MIN_SIZE elements on,
    over the leading axes of the 3-D array below it."""
    x = jax.random.normal(jax.random.key(0), (8, 50, 32))
    s, b = jax.random.normal(jax.random.key(1), (2, 32))
    new, old = layers.scale_bias, lambda x, s, b: x * s + b

    def grads(fn):
        return jax.grad(lambda x, s, b: jnp.sum(jnp.sin(fn(x, s, b)) * x), argnums=(0, 1, 2))

    for min_size, dims in ((x.size, "0"), (x.size + 1, "0,1")):
        monkeypatch.setattr(layers, "ROWS_MIN_SIZE", min_size)
        got, want = jax.jit(grads(new))(x, s, b), grads(old)(x, s, b)
        for a, c in zip(got, want, strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
        ones = (jnp.ones_like(x), jnp.ones_like(s), jnp.ones_like(b))
        got = jax.jit(lambda *p, t=ones: jax.jvp(new, p, t))(x, s, b)
        for a, c in zip(got, jax.jvp(old, (x, s, b), ones), strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
        found = _reductions_to_d(grads(new), x, s, b)
        assert found and set(found) == {dims}, (min_size, found)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_frozen_batch_norm_is_nn_batch_norm_with_running_statistics(dtype, monkeypatch):
    """FrozenBatchNorm: nn.BatchNorm(use_running_average=True)'s variables, initial values,
    outputs, gradients and jvps; batch_norm(train=True) stays nn.BatchNorm."""
    monkeypatch.setattr(layers, "ROWS_MIN_SIZE", 0)  # The rows path at this small size.
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 32)).astype(dtype)
    ref = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=dtype)
    frozen = layers.FrozenBatchNorm(1e-5, dtype)
    variables, want_vars = frozen.init(jax.random.key(1), x), ref.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, want_vars)
    for a, c in zip(jax.tree.leaves(variables), jax.tree.leaves(want_vars), strict=True):
        assert a.dtype == c.dtype == jnp.float32
        np.testing.assert_array_equal(a, c)
    keys = iter(jax.random.split(jax.random.key(2), 4))
    variables = jax.tree.map(lambda v: v + jax.random.uniform(next(keys), v.shape), variables)

    def loss(module):
        def f(p, x):
            y = module.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
            return jnp.sum(jnp.sin(y.astype(jnp.float32)))

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == jnp.float32 else {"rtol": 2e-2, "atol": 2e-2}
    got, want = loss(frozen)(variables["params"], x), loss(ref)(variables["params"], x)
    for a, c in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == c.dtype
        np.testing.assert_allclose(np.float32(a), np.float32(c), **tol)
    y = frozen.apply(variables, x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.float32(y), np.float32(ref.apply(variables, x)))
    tangent = jax.tree.map(jnp.ones_like, variables["params"])

    def jvp(module):
        f = lambda p: module.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)  # noqa: E731
        return jax.jvp(f, (variables["params"],), (tangent,))

    for a, c in zip(jvp(frozen), jvp(ref), strict=True):
        np.testing.assert_allclose(np.float32(a), np.float32(c), **tol)
    assert isinstance(layers.batch_norm(True, dtype, "bn"), nn.BatchNorm)
    assert isinstance(layers.batch_norm(False, dtype, "bn"), layers.FrozenBatchNorm)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("side", [8, 9])
def test_max_pool_is_nn_max_pool_with_its_gradient(dtype, side):
    """max_pool_3x3_s2: nn.max_pool's values, gradients and jvps bit for bit, ties included
    (after a ReLU most windows hold several zeros; the first in row-major order gets the
    gradient); an odd side takes nn.max_pool itself."""
    x = jax.random.normal(jax.random.key(0), (2, side, side, 3))
    x = jnp.round(jax.nn.relu(x) * 2).astype(dtype)  # Ties: zeros and repeated values.
    ref = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])  # noqa: E731
    y, y_ref = jax.jit(layers.max_pool_3x3_s2)(x), ref(x)
    assert y.dtype == y_ref.dtype == dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(np.float32(y), np.float32(y_ref))
    ct = jax.random.normal(jax.random.key(1), y.shape).astype(dtype)
    grad = jax.jit(lambda x: jax.vjp(layers.max_pool_3x3_s2, x)[1](ct)[0])(x)
    grad_ref = jax.vjp(ref, x)[1](ct)[0]
    assert float(jnp.sum(grad != 0)) < x.size / 2  # Routed to one input a window, not spread.
    np.testing.assert_array_equal(np.float32(grad), np.float32(grad_ref))
    tangent = jax.random.normal(jax.random.key(2), x.shape).astype(dtype)
    jvp = jax.jit(lambda x: jax.jvp(layers.max_pool_3x3_s2, (x,), (tangent,))[1])(x)
    np.testing.assert_array_equal(np.float32(jvp), np.float32(jax.jvp(ref, (x,), (tangent,))[1]))
