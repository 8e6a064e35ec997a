"""config.model.dtype ("auto": bf16 compute on accelerators, float32 on CPU; parameters and
logits stay float32), and steps.merge_on_host against the on-device metric merge."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from richft_jax import config_lib
from richft_jax.models import registry


@pytest.mark.parametrize(
    "name, backend, expected",
    [
        ("auto", "cpu", jnp.float32),
        ("auto", "gpu", jnp.bfloat16),
        ("auto", "cuda", jnp.bfloat16),
        ("auto", "tpu", jnp.bfloat16),
        ("float32", "tpu", jnp.float32),
        ("bfloat16", "cpu", jnp.bfloat16),
    ],
)
def test_compute_dtype(name, backend, expected):
    assert registry.compute_dtype(name, backend) == jnp.dtype(expected)


def test_unknown_dtype_names_the_config_key():
    with pytest.raises(ValueError, match=r"config.model.dtype: 'fp8'"):
        registry.compute_dtype("fp8", "cpu")


def test_default_config_computes_in_float32_on_cpu():
    assert config_lib.base_config().model.dtype == "auto"
    assert jax.default_backend() == "cpu"
    model = registry.build_classifier(config_lib.base_config().model, num_classes=10)
    assert model.backbone.dtype == jnp.float32


def _tiny_model(dtype: str):
    mc = ml_collections.ConfigDict(
        {
            "name": "small_resnet",
            "kwargs": {"widths": (8, 8, 16, 16), "feature_dim": 32},
            "freeze_bn": True,
            "head_zero_init": False,
            "dtype": dtype,
        }
    )
    return registry.build_classifier(mc, num_classes=10)


def _is_bf16_valued(x) -> bool:
    return bool(jnp.all(x == x.astype(jnp.bfloat16).astype(jnp.float32)))


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    features = {}
    for dtype in ("bfloat16", "float32"):
        model = _tiny_model(dtype)
        variables = model.init(jax.random.key(0), x, train=False)
        params = jax.tree.leaves(variables["params"])
        assert {a.dtype for a in params} == {jnp.dtype(jnp.float32)}
        logits, extra = model.apply(variables, x, train=False)
        assert logits.dtype == jnp.float32 and logits.shape == (4, 10)
        # The backbone hands float32 pooled features to the head, computed in `dtype`.
        assert extra["features"].dtype == jnp.float32
        features[dtype] = extra["features"]
    assert _is_bf16_valued(features["bfloat16"])
    assert not _is_bf16_valued(features["float32"])
    assert jnp.allclose(features["bfloat16"], features["float32"], rtol=0.05, atol=0.02)


def test_merge_on_host_equals_the_on_device_merge():
    from richft_jax import steps as steps_lib

    steps = [
        steps_lib.TrainMetrics.single_from_model_output(
            loss=jnp.array([float(i), 2.0 * i]),
            correct=jnp.array([1.0, float(i % 2)]),
            grad_norm=jnp.float32(i + 1),
            param_norm=jnp.float32(10 + i),
            learning_rate=jnp.float32(0.1 / (i + 1)),
        )
        for i in range(5)
    ]
    on_device = steps[0]
    for m in steps[1:]:
        on_device = on_device.merge(m)
    host = steps_lib.merge_on_host(steps).compute()
    for k, v in on_device.compute().items():
        assert float(host[k]) == pytest.approx(float(v), rel=1e-6), k
    assert float(host["param_norm"]) == pytest.approx(14.0)  # LastValue: the last step's.
    assert steps_lib.merge_on_host([]) is None
