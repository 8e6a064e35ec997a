"""The convnets' convolutions as matmuls (models/layers.py, Conv; config.model.kwargs.conv_impl):
nn.Conv's parameters, initial values, function and gradients; which convolutions become
matmuls; "auto" is matmuls on a CPU; a bad setting is refused naming the key."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_checks, config_lib
from richft_jax.models import layers
from richft_jax.models.demo import SmallResNet
from richft_jax.models.layers import Conv, conv_as_dot
from richft_jax.models.resnet import ResNet

SMALL = {"stage_sizes": (1, 1, 1, 1), "width": 8, "num_classes": 5}
DEMO = {"widths": (4, 8, 8, 16), "stem_stride": 2, "feature_dim": 32}


def _convs(model: nn.Module, variables: dict, x: jax.Array) -> int:
    """How many convolutions the model's forward pass runs."""
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    return str(jaxpr).count("conv_general_dilated")


def _close(got, want) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        # float32 sums in another order, through train-mode BatchNorm: ~1e-5 of the scale.
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-4 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize(
    "kernel,stride,side", [(3, 1, 2), (3, 2, 4), (3, 1, 5), (3, 2, 7), (1, 2, 6), (7, 2, 9)]
)
def test_conv_as_matmuls_is_nn_conv(kernel, stride, side, monkeypatch):
    x = jax.random.normal(jax.random.key(0), (3, side, side, 5))
    pad = [(kernel // 2, kernel // 2)] * 2
    ref = nn.Conv(6, (kernel, kernel), (stride, stride), padding=pad, use_bias=False)
    want_vars = ref.init(jax.random.key(1), x)
    for impl in ("conv", "dot", "every"):
        if impl == "every":  # The matmul path, also where the rule keeps a convolution.
            monkeypatch.setattr(layers, "conv_as_dot", lambda *_: True)
        conv = Conv(6, kernel, stride, "dot" if impl == "every" else impl)
        variables = conv.init(jax.random.key(1), x)
        np.testing.assert_array_equal(variables["params"]["kernel"], want_vars["params"]["kernel"])
        k = 1 + jax.random.normal(jax.random.key(2), variables["params"]["kernel"].shape)
        want = jax.jit(
            jax.value_and_grad(
                lambda k, x: jnp.sum(jnp.sin(ref.apply({"params": {"kernel": k}}, x))), (0, 1)
            )
        )(k, x)
        got = jax.jit(
            jax.value_and_grad(
                lambda k, x, f=conv.apply: jnp.sum(jnp.sin(f({"params": {"kernel": k}}, x))), (0, 1)
            )
        )(k, x)
        _close(got, want)


def test_which_convolutions_become_matmuls():
    # 1x1 windows, and windows with more taps than output pixels (XLA swaps their operands).
    assert conv_as_dot("dot", 1, (56, 56)) and conv_as_dot("dot", 3, (2, 2))
    assert not conv_as_dot("dot", 3, (3, 3)) and not conv_as_dot("dot", 7, (112, 112))
    assert not conv_as_dot("conv", 1, (4, 4)) and not conv_as_dot("conv", 3, (1, 1))
    assert conv_as_dot("auto", 1, (4, 4)) == (jax.default_backend() == "cpu")
    with pytest.raises(ValueError, match=r"conv_impl='matmul' is not one of \('auto', 'conv'"):
        conv_as_dot("matmul", 1, (4, 4))


@pytest.mark.parametrize(
    "build,x_shape,counts",
    [
        # Stem, 4 blocks x (1x1, 3x3, 1x1) and 4 shortcuts: 17 convolutions; the 12 1x1 go,
        # and at 64 px the last stage's 3x3 (2x2 maps). (Not smaller: train-mode BatchNorm
        # over 2 x 1 x 1 values amplifies the float32 rounding past any tolerance.)
        (lambda impl: ResNet(**SMALL, conv_impl=impl), (4, 64, 64, 3), (17, 4)),
        # Stem, 4 blocks x two 3x3, 3 shortcuts, the widening: 13; at 32 px the last stage's
        # maps are 2x2 (its two 3x3 go), the shortcuts and the widening are 1x1.
        (lambda impl: SmallResNet(**DEMO, conv_impl=impl), (4, 32, 32, 3), (13, 7)),
    ],
)
def test_models_with_matmul_convolutions_are_the_same_function_and_gradients(
    build, x_shape, counts
):
    x = jax.random.normal(jax.random.key(0), x_shape)
    conv, dot = build("conv"), build("dot")
    # Jitted: op-by-op initialisation of a ResNet takes seconds on a CPU.
    variables = jax.jit(lambda k: conv.init(k, x, train=False))(jax.random.key(1))
    dot_variables = jax.jit(lambda k: dot.init(k, x, train=False))(jax.random.key(1))
    assert jax.tree.structure(dot_variables) == jax.tree.structure(variables)
    for p, q in zip(jax.tree.leaves(dot_variables), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(p, q)  # Same names, shapes and initial values.
    # Random non-trivial parameters, train mode (batch statistics) and stride-2 shortcuts.
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
    _close(got, want)
    assert _convs(conv, variables, x) == counts[0]
    assert _convs(dot, variables, x) == counts[1]
    assert _convs(build("auto"), variables, x) == counts[1]  # auto: matmuls on this CPU.


@pytest.mark.parametrize("config_file", ["configs/resnet50_dropout.py", "configs/demo.py"])
def test_a_bad_conv_impl_is_refused_naming_it(config_file):
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"conv_impl='matmul' is not one of \('auto', 'conv'"):
        ResNet(**SMALL, conv_impl="matmul").init(jax.random.key(0), x)
    config = config_lib.load_config_file(config_file)
    assert config.model.kwargs.conv_impl == "auto"
    config.model.kwargs.conv_impl = "matmul"
    errors = [str(e) for e in config_checks.config_errors(config)]
    assert "config.model.kwargs.conv_impl='matmul' is not one of ('auto', 'conv', 'dot')." in errors
