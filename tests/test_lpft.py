"""Linear probing: the JAX L-BFGS solution matches scikit-learn's LogisticRegression; stopping at
max |grad| <= TOL reaches a long fixed-iteration fit's objective and C in fewer iterations. (An
LP-FT run, its step-0 probe rows and its head: test_end_to_end.py.)"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from richft_jax import config_lib
from richft_jax.methods import lpft


def data(n=300, d=12, k=4, seed=0):
    centers = np.random.default_rng(0).normal(size=(k, d)) * 1.5  # One distribution,
    rng = np.random.default_rng(seed)  # different draws per seed.
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def test_logistic_regression_matches_scikit_learn():
    x, y = data()
    for c in (0.01, 1.0):
        w, b = lpft.fit_logistic_regression(x, y, 4, c, max_iter=300)
        ref = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
        # The softmax parametrisation is shift-invariant over classes only without penalty;
        # with the L2 term both solvers reach the same unique minimiser.
        np.testing.assert_allclose(np.asarray(w).T, ref.coef_, atol=2e-3, rtol=2e-3)
        probs = np.asarray(jax_softmax(x @ np.asarray(w) + np.asarray(b)))
        np.testing.assert_allclose(probs, ref.predict_proba(x), atol=2e-3)


def jax_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_linear_probe_picks_c_on_validation_and_folds_standardisation():
    x, y = data(400)
    xv, yv = data(200, seed=1)
    shift = np.linspace(-3, 3, x.shape[1]).astype(np.float32)  # raw, unstandardised features
    result = lpft.linear_probe(x * 5 + shift, y, xv * 5 + shift, yv, 4, cs=(1e-6, 1e-2, 1.0))
    assert result["c"] in (1e-2, 1.0)  # A vanishing C (all-zero weights) scores at chance.
    assert dict(result["scores"])[1e-6] < 0.5
    logits = (xv * 5 + shift) @ np.asarray(result["kernel"]) + np.asarray(result["bias"])
    acc = np.mean(logits.argmax(-1) == yv)
    assert acc == pytest.approx(result["val_accuracy"], abs=1e-6) and acc > 0.8


def separable_data(n, seed, d=12, k=4):
    """Overlapping classes: validation accuracy peaks at one C of the grid (0.01) by a margin."""
    centers = np.random.default_rng(0).normal(size=(k, d)) * 0.6
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_stopping_at_the_gradient_tolerance_reaches_the_fixed_iteration_fit():
    """Per C, warm-started as linear_probe does: the tolerance-stopped fit reaches the objective
    of a 2,000-iteration fit (tol=0, the old fixed-length solver) in under MAX_ITER iterations."""
    x, y = separable_data(400, 0)
    xs = jnp.asarray((x - x.mean(0)) / (x.std(0) + 1e-6))
    onehot = jax.nn.one_hot(y, 4)
    params = (jnp.zeros((12, 4)), jnp.zeros(4))
    for c in (1e-4, 1e-2, 1.0, 100.0):
        fit = lpft.lbfgs_fit(xs, onehot, *lpft.traced(c, params, lpft.MAX_ITER, lpft.TOL))
        long = lpft.lbfgs_fit(xs, onehot, *lpft.traced(c, params, 2000, 0.0))
        assert int(long.iterations) == 2000 and 0 < int(fit.iterations) < lpft.MAX_ITER
        assert float(fit.grad_max) <= lpft.TOL
        objective = lpft.scaled_objective(xs, onehot, jnp.float32(c))
        value, best = float(objective(fit.params)), float(objective(long.params))
        assert value == pytest.approx(float(fit.value), rel=1e-6)
        assert value == pytest.approx(best, rel=1e-6, abs=1e-8) and value >= best - 1e-7
        params = fit.params


def test_linear_probe_picks_the_same_c_as_fixed_iteration_fits_with_one_compile():
    """The whole grid: same scores and C as fixed 2,000-iteration fits, every fit stopped early,
    and lbfgs_fit compiled once for all C (c, max_iter and tol are traced)."""
    x, y = separable_data(400, 0)
    xv, yv = separable_data(1000, 1)
    cs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    compiled = lpft.lbfgs_fit._cache_size()
    probe = lpft.linear_probe(x, y, xv, yv, 4, cs)
    assert lpft.lbfgs_fit._cache_size() - compiled <= 1
    fixed = lpft.linear_probe(x, y, xv, yv, 4, cs, max_iter=2000, tol=0.0)
    assert probe["scores"] == fixed["scores"] and probe["c"] == fixed["c"] == 1e-2
    accs = sorted(acc for _, acc in fixed["scores"])
    assert accs[-1] - accs[-2] >= 0.005  # A well-determined C: 5+ of 1,000 examples ahead.
    assert max(probe["iterations"]) < lpft.MAX_ITER and fixed["iterations"] == [2000] * len(cs)
    np.testing.assert_allclose(probe["kernel"], fixed["kernel"], atol=1e-3)


def test_the_c_grid_is_a_config_value():
    """config.lp_c_grid (what linear_probe_head passes as `cs`): base_config's default is the
    LP-FT code's grid; a list (as config.json gives it back) as floats; None, empty or C <= 0
    refused."""
    assert lpft.c_grid(config_lib.base_config()) == lpft.C_GRID
    assert lpft.C_GRID == pytest.approx(np.logspace(-7, 2, 10), rel=1e-12)
    got = lpft.c_grid(ml_collections.ConfigDict({"lp_c_grid": [1e-3, 1]}))
    assert got == (1e-3, 1.0) and all(type(c) is float for c in got)
    for bad in (None, (), (0.0, 1.0), (-1.0,)):
        with pytest.raises(ValueError, match="lp_c_grid"):
            lpft.c_grid(ml_collections.ConfigDict({"lp_c_grid": bad}))
    # A run's config.json from before the key: that run probed C_GRID.
    assert lpft.c_grid(ml_collections.ConfigDict({"method": "lpft"})) == lpft.C_GRID
