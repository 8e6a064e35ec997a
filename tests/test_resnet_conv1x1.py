"""The torchvision-layout ResNet's 1x1 convolutions as matmuls (models/resnet.py, Conv1x1):
the same parameters, initial values, function and gradients as XLA's convolutions; "auto" is
matmuls on a CPU; a bad setting is refused naming the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_checks, config_lib
from richft_jax.models.resnet import ResNet

SMALL = {"stage_sizes": (1, 1, 1, 1), "width": 8, "num_classes": 5}


def _convs(model: ResNet, variables: dict, x: jax.Array) -> int:
    """How many convolutions the model's forward pass runs."""
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
    return str(jaxpr).count("conv_general_dilated")


def test_matmul_1x1_convolutions_are_the_same_function_and_gradients():
    x = jax.random.normal(jax.random.key(0), (4, 64, 64, 3))
    conv, dot = ResNet(**SMALL, conv1x1="conv"), ResNet(**SMALL, conv1x1="dot")
    variables = conv.init(jax.random.key(1), x)
    dot_variables = dot.init(jax.random.key(1), x)
    assert jax.tree.structure(dot_variables) == jax.tree.structure(variables)
    for p, q in zip(jax.tree.leaves(dot_variables), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(p, q)  # Same names, shapes and initial values.
    # Random non-trivial parameters, train mode (batch statistics) and a stride-2 shortcut.
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(variables))))
    params = jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape), variables["params"]
    )

    def loss(model, params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(out))

    want = jax.jit(jax.value_and_grad(lambda p: loss(conv, p)))(params)
    got = jax.jit(jax.value_and_grad(lambda p: loss(dot, p)))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        # float32 sums in another order, through train-mode BatchNorm: ~1e-5 of the scale.
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4 * max(1.0, np.abs(b).max()))
    # Stem, 4 blocks x (1x1, 3x3, 1x1) and 4 shortcuts: 17 convolutions; the 12 1x1 ones go.
    assert _convs(conv, variables, x) == 17
    assert _convs(dot, variables, x) == 5
    assert _convs(ResNet(**SMALL), variables, x) == 5  # auto: matmuls on this CPU.


def test_a_bad_conv1x1_is_refused_naming_it():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"conv1x1='matmul' is not one of \('auto', 'conv'"):
        ResNet(**SMALL, conv1x1="matmul").init(jax.random.key(0), x)
    config = config_lib.load_config_file("configs/resnet50_dropout.py")
    assert config.model.kwargs.conv1x1 == "auto"
    config.model.kwargs.conv1x1 = "matmul"
    errors = [str(e) for e in config_checks.config_errors(config)]
    assert "config.model.kwargs.conv1x1='matmul' is not one of ('auto', 'conv', 'dot')." in errors
