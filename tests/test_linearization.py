"""The Taylor model: exact at θ0, quadratic error along a direction, jvp = explicit J·v."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from richft_jax.analysis.linearization import compare, taylor_model


def mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"]


def init():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "w1": jax.random.normal(k1, (4, 8)),
        "b1": jax.random.normal(k2, (8,)) * 0.1,
        "w2": jax.random.normal(k3, (8, 3)),
    }


def test_equal_at_theta0_and_error_shrinks_quadratically():
    p0 = init()
    x = jax.random.normal(jax.random.key(1), (16, 4))
    np.testing.assert_allclose(taylor_model(mlp, p0, p0, x), mlp(p0, x), rtol=1e-6)
    direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), p0)
    errors = []
    for t in (0.1, 0.05, 0.025):
        p = jax.tree.map(lambda a, d, t=t: a + t * d, p0, direction)
        errors.append(float(jnp.linalg.norm(mlp(p, x) - taylor_model(mlp, p0, p, x))))
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    np.testing.assert_allclose(ratios, 4.0, rtol=0.15)  # Halving t quarters the error.


def test_jvp_equals_explicit_jacobian_vector_product():
    p0, p1 = init(), jax.tree.map(lambda a: a * 1.1 + 0.01, init())
    x = jax.random.normal(jax.random.key(3), (5, 4))
    flat0, unravel = ravel_pytree(p0)
    flat1, _ = ravel_pytree(p1)
    jac = jax.jacobian(lambda f: mlp(unravel(f), x).ravel())(flat0)  # [outputs, params]
    explicit = mlp(p0, x).ravel() + jac @ (flat1 - flat0)
    np.testing.assert_allclose(taylor_model(mlp, p0, p1, x).ravel(), explicit, rtol=1e-4, atol=1e-5)


def test_compare_reports_agreement_and_distance():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    other = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    m = compare(logits, other, jnp.array([0, 1, 1]))
    np.testing.assert_allclose(m["agreement"], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["network_accuracy"], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["taylor_accuracy"], 1 / 3, rtol=1e-6)
    assert float(m["relative_distance"]) > 0


def test_classifier_taylor_model_on_logits_and_features():
    from richft_jax.analysis.linearization import classifier_outputs
    from richft_jax.models.classifier import Classifier
    from richft_jax.models.demo import SmallResNet

    model = Classifier(SmallResNet(widths=(4, 4, 8, 8), feature_dim=16), 10, freeze_bn=True)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    v = model.init(jax.random.key(1), x, train=False)
    p0 = v["params"]
    (net, net_aux), (lin, lin_aux) = classifier_outputs(model, p0, p0, v["batch_stats"], x)
    np.testing.assert_allclose(lin, net, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin_aux["features"], net_aux["features"], rtol=1e-5, atol=1e-6)
    p1 = jax.tree.map(lambda a: a + 0.01, p0)
    (net1, _), (lin1, _) = classifier_outputs(model, p0, p1, v["batch_stats"], x)
    assert 0 < float(jnp.linalg.norm(net1 - lin1)) < float(jnp.linalg.norm(net1 - net))


def test_taylor_sums_over_a_masked_batch_match_a_direct_computation():
    from richft_jax.analysis.linearization import classifier_outputs, make_taylor_sums, ratios
    from richft_jax.data.pixels import normalize
    from richft_jax.models.classifier import Classifier
    from richft_jax.models.demo import SmallResNet

    model = Classifier(SmallResNet(widths=(4, 4, 8, 8), feature_dim=16), 5, freeze_bn=True)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, 5, 8).astype(np.int32),
        "mask": np.array([True] * 6 + [False] * 2),  # Padding must not count.
    }
    v0 = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    noise = jax.tree.map(lambda p: 0.3 * jax.random.normal(jax.random.key(2), p.shape), v0)
    params = jax.tree.map(jnp.add, v0["params"], noise["params"])
    v = {"params": params, "batch_stats": v0["batch_stats"]}
    sums = jax.jit(make_taylor_sums(model, "minus_one_one"))
    r = ratios(jax.device_get(sums(v0, v, batch)))
    x = normalize(batch["image"][:6], "minus_one_one")
    (net, aux), (lin, lin_aux) = classifier_outputs(
        model, v0["params"], v["params"], v0["batch_stats"], x
    )
    m = compare(net, lin, batch["label"][:6])
    assert r["num_examples"] == 6
    np.testing.assert_allclose(r["agreement"], m["agreement"], rtol=1e-6)
    np.testing.assert_allclose(r["network_accuracy"], m["network_accuracy"], rtol=1e-6)
    np.testing.assert_allclose(r["taylor_accuracy"], m["taylor_accuracy"], rtol=1e-6)
    np.testing.assert_allclose(r["logits_relative_distance"], m["relative_distance"], rtol=1e-4)
    feat = jnp.linalg.norm(aux["features"] - lin_aux["features"]) / jnp.linalg.norm(aux["features"])
    np.testing.assert_allclose(r["features_relative_distance"], feat, rtol=1e-4)
    assert r["logits_relative_distance"] > 1e-3
    at0 = ratios(jax.device_get(sums(v0, v0, batch)))
    assert at0["agreement"] == 1.0 and at0["logits_relative_distance"] < 1e-6


def test_id_ood_means_training_out_splits_and_test_in_split():
    from richft_jax.results import id_ood, is_id, is_ood

    rows = [
        {"is_test_domain": False, "split": "out", "x": 0.2},
        {"is_test_domain": False, "split": "out", "x": 0.4},
        {"is_test_domain": False, "split": "in", "x": 9.0},
        {"is_test_domain": True, "split": "in", "x": 0.7},
        {"is_test_domain": True, "split": "out", "x": 9.0},
    ]
    np.testing.assert_allclose(list(id_ood(rows, "x").values()), [0.3, 0.7])
    assert [is_id(r) for r in rows] == [True, True, False, False, False]
    assert [is_ood(r) for r in rows] == [False, False, False, True, False]
    assert np.isnan(id_ood(rows[:3], "x")["ood"])  # No test-domain row: NaN, not an error.
