"""Zhang & Bottou's Figure 1: weight interpolation against representation interpolation.

Between θ_pre (the pretrained backbone with the run's initial head: θ0 of the Taylor model)
and θ_ft (the fine-tuned network), along α ∈ [0, 1]:
- weight interpolation: the network with weights α·θ_pre + (1 − α)·θ_ft (head included);
- representation interpolation: features α·Φ_pre(x) + (1 − α)·Φ_ft(x) read by the
  interpolated head α·head_pre + (1 − α)·head_ft.
α = 0 is the fine-tuned network, α = 1 the pretrained one, for both. Close to the linear
regime, weight interpolation moves the outputs linearly in α as well.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from richft_jax import evaluation, results, steps
from richft_jax.data import pipeline

KINDS = ("weight", "representation")


def mix(pre: Any, ft: Any, alpha: jax.Array | float) -> Any:
    """α·pre + (1 − α)·ft, leaf by leaf (α = 0: ft, α = 1: pre)."""
    return jax.tree.map(lambda p, f: alpha * p + (1.0 - alpha) * f, pre, ft)


def weight_interpolation_logits(model, variables: dict, images: jax.Array) -> jax.Array:
    """Logits of the network with interpolated weights; `variables` = {"pre", "ft", "alpha"}."""
    v = mix(variables["pre"], variables["ft"], variables["alpha"])
    return model.apply(v, images, train=False)[0]


def representation_interpolation_logits(model, variables: dict, images: jax.Array) -> jax.Array:
    """Logits of the interpolated head on interpolated penultimate features."""
    alpha = variables["alpha"]
    phi_pre = model.apply(variables["pre"], images, train=False)[1]["features"]
    phi_ft = model.apply(variables["ft"], images, train=False)[1]["features"]
    head = mix(variables["pre"]["params"]["head"], variables["ft"]["params"]["head"], alpha)
    phi = alpha * phi_pre + (1.0 - alpha) * phi_ft
    return (phi @ head["kernel"] + head["bias"]).astype(jnp.float32)


LOGITS = {
    "weight": weight_interpolation_logits,
    "representation": representation_interpolation_logits,
}


@steps.jit_per_model
def eval_step(model, kind: str, normalize: str) -> Callable[[dict, dict], steps.SplitSums]:
    """The jitted eval step of one interpolation kind and architecture (α is in the variables:
    one compile for every α)."""
    return steps.make_eval_step(lambda v, x: LOGITS[kind](model, v, x), normalize)


def interpolation_curves(
    model,
    v_pre: dict,
    v_ft: dict,
    data: pipeline.DomainData,
    alphas,
    normalize: str,
    batch_size: int,
    mesh,
    max_examples: int | None = None,
) -> list[dict]:
    """Accuracy and loss of both interpolations on every split for each α: one row per
    (kind, α, split). α is an argument of the jitted step, so each kind compiles once."""
    rows = []
    for kind in KINDS:
        step = eval_step(model, kind, normalize)
        for alpha in alphas:
            variables = {"pre": v_pre, "ft": v_ft, "alpha": jnp.float32(alpha)}
            evals = evaluation.evaluate(step, variables, data, batch_size, mesh, max_examples)
            rows += results.eval_rows(evals, kind=kind, alpha=float(alpha))
    return rows
