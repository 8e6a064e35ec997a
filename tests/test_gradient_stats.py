"""analysis.gradient_directions (the `gradient_stats` command): the early-dropout
measurements (Liu et al. 2023)."""

import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import config_lib
from richft_jax.analysis import gradient_directions


def _grad(*values):
    """A gradient pytree whose flat vector is `values` (split over two leaves)."""
    return {"a": jnp.asarray(values[:1], jnp.float32), "b": {"c": jnp.asarray(values[1:])}}


def test_direction_stats_by_hand():
    same = [_grad(1.0, 2.0, 2.0)] * 3
    out = gradient_directions.direction_stats(same, _grad(2.0, 4.0, 4.0))  # Scale does not count.
    assert out["direction_variance"] == pytest.approx(0.0, abs=1e-7)
    assert out["alignment_with_full"] == pytest.approx(1.0)
    # Two orthogonal directions: pairwise 1 - cos = 1; each at 45 degrees to the full one.
    out = gradient_directions.direction_stats([_grad(1.0, 0.0), _grad(0.0, 3.0)], _grad(1.0, 1.0))
    assert out["direction_variance"] == pytest.approx(1.0)
    assert out["alignment_with_full"] == pytest.approx(np.sqrt(0.5))
    # Opposite directions: 1 - cos = 2.
    out = gradient_directions.direction_stats([_grad(1.0, 1.0), _grad(-2.0, -2.0)], _grad(1.0, 1.0))
    assert out["direction_variance"] == pytest.approx(2.0)
    assert out["alignment_with_full"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_both_runs_measure_the_early_phase(data_dir, freeze_bn):
    """From the same start: without dropout and with early dropout, every `measure_every`
    steps before the cutoff; trained BatchNorm (from-scratch runs) works too."""
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = None
    c.model.freeze_bn = freeze_bn
    c.data.batch_size_per_domain = 8
    args = dict(rate=0.5, steps=6, cutoff=4, measure_every=2, num_batches=3, max_examples=32)
    out = gradient_directions.gradient_stats(c, args)
    none, early = out["no_dropout"], out["early_dropout"]
    assert [m["step"] for m in none["early_phase"]] == [0, 2]
    # Step 0: same parameters (the run's θ0, run.init_variables); the full gradient has no
    # dropout, so it is the same in both. The mini-batches differ only by the dropout masks,
    # which spread their directions. With BatchNorm on batch statistics at a random init the
    # mini-batch gradients are already about orthogonal (variance ~1): no spread to see there.
    if freeze_bn:
        assert (
            early["early_phase"][0]["direction_variance"]
            > none["early_phase"][0]["direction_variance"]
        )
    for r in (none, early):
        assert 0.0 < r["mean_direction_variance"] < 2.0
        assert -1.0 <= r["mean_alignment_with_full"] <= 1.0
        assert np.isfinite(r["final_train_loss"]) and r["final_train_loss"] > 0
    assert none["final_train_loss"] != early["final_train_loss"]
