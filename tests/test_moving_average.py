"""The running weight average equals the explicit mean of the parameters since `start`."""

import jax.numpy as jnp
import numpy as np

from richft_jax.methods import moving_average


def test_uniform_average_from_start_step():
    history = [np.full(3, float(v)) for v in [5, 1, 2, 3, 4, 9]]
    avg = {"w": jnp.zeros(3)}
    start = 3
    for step, p in enumerate(history, 1):  # step = steps done after producing p
        avg = moving_average.update(avg, {"w": jnp.asarray(p)}, jnp.int32(step), start)
        if step < start:
            np.testing.assert_allclose(avg["w"], p)  # Follows the parameters before start.
    np.testing.assert_allclose(avg["w"], np.mean(history[start - 1 :], 0), rtol=1e-6)
