"""The published-layout ViT's rematerialisation switch: same parameters, same function, same
gradients (dropout and drop path included), with the blocks recomputed in the backward pass."""

import jax
import jax.numpy as jnp
import numpy as np

from richft_jax.models.classifier import Classifier
from richft_jax.models.vit import ViT

TINY = {"width": 32, "depth": 3, "mlp_dim": 64, "num_heads": 2, "patch_size": 8}


def _loss_and_grads(remat: bool, rates: dict | None):
    model = Classifier(ViT(**TINY, remat=remat), num_classes=5)
    x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
    y = jnp.arange(4) % 5
    variables = model.init(jax.random.key(1), x, train=False)

    def loss_fn(params):
        logits, _ = model.apply(
            {"params": params},
            x,
            train=True,
            dropout_rate=0.5,
            backbone_rates=rates,
            rngs={"dropout": jax.random.key(2)},
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

    fn = jax.value_and_grad(loss_fn)
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
    # The remat version really checkpoints the blocks; the plain one does not.
    assert "checkpoint" in str(r_jaxpr) or "remat" in str(r_jaxpr)
    assert "checkpoint" not in str(jaxpr) and "remat" not in str(jaxpr)
    # The block regularisers are on: without them the loss differs.
    _, (clean_loss, _), _ = _loss_and_grads(True, None)
    assert abs(float(clean_loss) - float(loss)) > 1e-4
