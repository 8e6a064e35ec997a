"""Linear probing: the JAX L-BFGS solution matches scikit-learn's LogisticRegression."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

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


def test_lp_ft_starts_from_the_lp_head(data_dir, tmp_path):
    """With a zero learning rate fine-tuning never moves: the LP-FT rows after its steps equal
    the LP rows of step 0 on every split, so its first step starts from the probe's head; and
    the run builder's θ0 (what the analyses start from) is that state, probe head included."""
    import jax

    from richft_jax import config_lib, results, run, train

    c = config_lib.load_config_file("configs/demo_lpft.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = None  # The probe is fitted on the init's features: same mechanism.
    c.optim.lr = 0.0
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 2, 2, 2
    c.data.batch_size_per_domain, c.data.eval_batch_size, c.data.eval_max_examples = 8, 64, 64
    train.train_and_evaluate(c, str(tmp_path / "lpft"))
    rows = results.read_rows(tmp_path / "lpft")
    key = lambda r: (r["domain"], r["split"])  # noqa: E731
    lp = {key(r): (r["accuracy"], r["loss"]) for r in rows if r["method"] == "lp"}
    ft = {key(r): (r["accuracy"], r["loss"]) for r in rows if r["method"] == "lp_ft"}
    assert len(lp) == 8 and lp.keys() == ft.keys()
    for k in lp:
        assert ft[k] == pytest.approx(lp[k], rel=1e-5), k
    # A fresh head would be near chance (0.1) on the training domains; the probe is not.
    assert np.mean([lp[(d, "out")][0] for d in ("mnist", "mnist_m", "digits")]) > 0.2
    built = run.from_workdir(str(tmp_path / "lpft"), "latest")
    theta0 = run.init_variables(built.config, built.model, built.data)
    flat = jax.tree_util.tree_flatten_with_path(theta0)[0]
    assert len(flat) == len(jax.tree.leaves(built.variables))
    for (path, a), b in zip(flat, jax.tree.leaves(built.variables), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
