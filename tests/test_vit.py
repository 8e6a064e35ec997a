"""The published-layout ViT's rematerialisation switch: same parameters, same function, same
gradients (dropout and drop path included), with the blocks recomputed in the backward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from richft_jax.models.classifier import Classifier
from richft_jax.models.vit import ViT

TINY = {"width": 32, "depth": 3, "mlp_dim": 64, "num_heads": 2, "patch_size": 8}


def _train_loss(model: nn.Module, params, x: jax.Array, rates: dict | None) -> jax.Array:
    """Cross-entropy of 4 images (labels 0..3) at training, feature dropout 0.5 and the
    backbone's `rates`, with a fixed dropout key (the same masks on every call)."""
    logits, _ = model.apply(
        {"params": params},
        x,
        train=True,
        dropout_rate=0.5,
        backbone_rates=rates,
        rngs={"dropout": jax.random.key(2)},
    )
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), jnp.arange(4)])


def _loss_and_grads(remat: bool, rates: dict | None):
    model = Classifier(ViT(**TINY, remat=remat), num_classes=5)
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
    variables = model.init(jax.random.key(1), x, train=False)
    fn = jax.value_and_grad(lambda params: _train_loss(model, params, x, rates))
    return (
        variables["params"],
        jax.jit(fn)(variables["params"]),
        jax.make_jaxpr(fn)(variables["params"]),
    )


def test_remat_keeps_parameters_loss_and_gradients():
    rates = {"block_dropout_rate": jnp.float32(0.3), "drop_path_rate": jnp.float32(0.3)}
    params, (loss, grads), jaxpr = _loss_and_grads(False, rates)
    r_params, (r_loss, r_grads), r_jaxpr = _loss_and_grads(True, rates)
    # Same names and shapes: checkpoints load either way.
    assert jax.tree.structure(params) == jax.tree.structure(r_params)
    assert "encoderblock_2" in params["backbone"]["Transformer"]
    # Same dropout masks and drop-path draws, so the same loss and gradients.
    np.testing.assert_allclose(r_loss, loss, rtol=1e-6)
    for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(r_grads), strict=True):
        np.testing.assert_allclose(rg, g, rtol=1e-4, atol=1e-6)
    # Both recompute each LayerNorm and GELU (2 + 1 a block, and the final LayerNorm); the remat
    # version also checkpoints each whole block.
    plain, blocks = str(jaxpr).count("remat"), str(r_jaxpr).count("remat")
    assert plain >= 3 * TINY["depth"] + 1
    assert blocks >= plain + TINY["depth"]
    # The block regularisers are on: without them the loss differs.
    _, (clean_loss, _), _ = _loss_and_grads(True, None)
    assert abs(float(clean_loss) - float(loss)) > 1e-4


def _same_init_and_function(new, old, x, *call_args):
    """Same parameter tree and initial values, and the same outputs and gradients, as `old`."""
    params = new.init(jax.random.key(3), x, *call_args)["params"]
    old_params = old.init(jax.random.key(3), x, *call_args)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(old_params)
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(old_params), strict=True):
        assert p.shape == q.shape
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    # Random non-trivial parameters (zero biases and unit scales would hide mistakes).
    keys = iter(jax.random.split(jax.random.key(4), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape), params)

    def value_and_grads(module):
        def f(p, x):
            return jnp.sum(jnp.sin(module.apply({"params": p}, x, *call_args)))

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x)

    for a, b in zip(
        jax.tree.leaves(value_and_grads(new)), jax.tree.leaves(value_and_grads(old)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)

    # Forward mode too (the linear-regime analysis's Taylor model is a jvp).
    tangents = jax.tree.map(jnp.ones_like, (params, x))

    def jvp(module):
        f = lambda p, x: module.apply({"params": p}, x, *call_args)  # noqa: E731
        return jax.jit(lambda: jax.jvp(f, (params, x), tangents))()

    for a, b in zip(jax.tree.leaves(jvp(new)), jax.tree.leaves(jvp(old)), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_blocks_match_flax_layers():
    """vit.py's CPU-friendly attention, LayerNorm and MLP are flax's MultiHeadDotProductAttention,
    LayerNorm and two Dense layers: same parameters, initial values, outputs and gradients."""
    from richft_jax.models import vit  # noqa: PLC0415

    x = jax.random.normal(jax.random.key(5), (3, 7, 32))

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            return vit.MultiHeadAttention(4, name="attn")(x)

    class FlaxAttention(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.MultiHeadDotProductAttention(4, name="attn")(x, x)

    _same_init_and_function(Attention(), FlaxAttention(), x)
    _same_init_and_function(vit.LayerNorm(1e-6), nn.LayerNorm(1e-6), x)

    class FlaxMlp(nn.Module):
        @nn.compact
        def __call__(self, x, dropout):
            y = dropout(nn.gelu(nn.Dense(48, name="Dense_0")(x), approximate=True))
            return nn.Dense(x.shape[-1], name="Dense_1")(y)

    _same_init_and_function(vit.MlpBlock(48), FlaxMlp(), x, lambda y: y)


def _kept_for_backward(module, x, *call_args) -> list[tuple[int, ...]]:
    """Shapes of what the module's vjp keeps for the backward pass (parameters included),
    traced as inside a jitted step (eagerly, a reused array can be counted twice)."""
    params = module.init(jax.random.key(3), x, *call_args)["params"]

    def residuals(p, x):
        return jax.tree.leaves(
            jax.vjp(lambda p, x: module.apply({"params": p}, x, *call_args), p, x)[1]
        )

    return sorted(r.shape for r in jax.eval_shape(residuals, params, x))


def test_blocks_keep_one_tensor_per_elementwise_chain():
    """LayerNorm keeps its input (not float32 copies), attention one probability matrix (not
    softmax's exp and quotient), the MLP GELU's input and output (not its five intermediates):
    flax's layers keep more of each."""
    from richft_jax.models import vit  # noqa: PLC0415

    x = jax.random.normal(jax.random.key(5), (8, 50, 32))
    assert _kept_for_backward(vit.LayerNorm(1e-6), x) == [(8, 50, 32), (32,)]  # x, scale
    assert len(_kept_for_backward(nn.LayerNorm(1e-6), x)) > 3

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            return vit.MultiHeadAttention(4, name="attn")(x)

    assert _kept_for_backward(Attention(), x).count((8, 4, 50, 50)) == 1
    rows = _kept_for_backward(vit.MlpBlock(48), x, lambda y: y)
    hidden = [s for s in rows if s == (8 * 50, 48)]  # (batch * tokens, mlp_dim)
    assert len(hidden) == 2, hidden


def test_attention_implementations_compute_the_same_function():
    """`attention="xla"` (jax.nn.dot_product_attention) is the einsum path's function with the
    same parameters; an unknown implementation is refused by name."""
    import pytest  # noqa: PLC0415

    from richft_jax.models.vit import ATTENTION  # noqa: PLC0415

    assert ATTENTION == ("xla", "cudnn")
    x = jax.random.uniform(jax.random.key(5), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
    kw = {**TINY, "num_classes": 5}
    _same_init_and_function(ViT(**kw, attention="xla"), ViT(**kw), x)
    with pytest.raises(ValueError, match="attention='flash'.*einsum"):
        ViT(**kw, attention="flash").init(jax.random.key(0), x)


class _FlaxSmallViT(nn.Module):
    """demo.SmallViT as flax's own layers over (batch, tokens, dim): the reference its
    rows layout (and vit.MultiHeadAttention) must compute, checkpoints loading unchanged."""

    @nn.compact
    def __call__(self, x, *, train, block_dropout_rate=None, drop_path_rate=None):
        from richft_jax.models import layers  # noqa: PLC0415

        on = block_dropout_rate is not None  # Both rates or neither (init).

        def dropout(y):
            return (
                layers.feature_dropout(y, block_dropout_rate, self.make_rng("dropout")) if on else y
            )

        def residual(x, y, rate):
            return x + (layers.drop_path(y, rate, self.make_rng("dropout")) if on else y)

        rates = layers.depth_rates(drop_path_rate, 2) if on else [None, None]
        x = nn.Conv(16, (8, 8), (8, 8), name="embedding")(x)
        x = x.reshape(x.shape[0], -1, 16)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], 16))
        for i in range(2):
            y = nn.LayerNorm(name=f"block{i}_ln1")(x)
            y = nn.MultiHeadDotProductAttention(2, name=f"block{i}_attn")(y, y)
            x = residual(x, dropout(y), rates[i])
            y = nn.Dense(32, name=f"block{i}_mlp1")(nn.LayerNorm(name=f"block{i}_ln2")(x))
            x = residual(
                x, dropout(nn.Dense(16, name=f"block{i}_mlp2")(dropout(nn.gelu(y)))), rates[i]
            )
        x = nn.LayerNorm(name="encoder_norm")(x).mean(axis=1)
        return nn.gelu(nn.Dense(24, name="widen")(x))


def test_small_vit_rows_layout_is_flax_layers_function():
    """The demo's SmallViT (its blocks over (batch * tokens) rows, vit.py's attention): flax's
    layers' parameters, initial values, and loss and gradients with block dropout and drop path
    on (the same masks)."""
    from richft_jax.models.demo import SmallViT  # noqa: PLC0415

    model = Classifier(SmallViT(patch=8, dim=16, depth=2, heads=2, mlp_ratio=2, feature_dim=24), 5)
    ref = Classifier(_FlaxSmallViT(), 5)
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    ref_variables = ref.init(jax.random.key(1), x, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(ref_variables)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(ref_variables), strict=True):
        np.testing.assert_array_equal(a, b)
    rates = {"block_dropout_rate": 0.3, "drop_path_rate": 0.5}
    params = jax.tree.map(lambda p: p + 0.1, variables["params"])  # Non-zero biases.
    got = jax.jit(jax.value_and_grad(lambda p: _train_loss(model, p, x, rates)))(params)
    want = jax.jit(jax.value_and_grad(lambda p: _train_loss(ref, p, x, rates)))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
