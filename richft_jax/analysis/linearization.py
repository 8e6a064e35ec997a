"""The linear regime of fine-tuning: a network against its first-order Taylor model.

f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0), computed with one `jax.jvp` (the Jacobian is never
materialised), for any output pytree of the network (logits, penultimate features). Zhang &
Bottou argue that fine-tuning a large pretrained network on little data stays close to it.
θ0 of a run is its train state's starting point, `richft_jax.run.init_variables`; ID / OOD
means of the per-split rows are `richft_jax.results.id_ood`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from richft_jax import parallel
from richft_jax.data import pipeline, pixels

PyTree = Any


def taylor_model(fn: Callable[..., PyTree], params0: PyTree, params: PyTree, *args: Any) -> PyTree:
    """fn(params0, *args) + J_params fn(params0, *args) · (params − params0), by jax.jvp."""
    delta = jax.tree.map(lambda p, p0: p - p0, params, params0)
    out0, tangent = jax.jvp(lambda p: fn(p, *args), (params0,), (delta,))
    return jax.tree.map(jnp.add, out0, tangent)


def compare(network_logits: jax.Array, taylor_logits: jax.Array, labels: jax.Array) -> dict:
    """Prediction agreement, both accuracies and the relative logit distance on one batch."""
    a, b = jnp.argmax(network_logits, -1), jnp.argmax(taylor_logits, -1)
    return {
        "agreement": jnp.mean(a == b),
        "network_accuracy": jnp.mean(a == labels),
        "taylor_accuracy": jnp.mean(b == labels),
        "relative_distance": jnp.linalg.norm(network_logits - taylor_logits)
        / jnp.maximum(jnp.linalg.norm(network_logits), 1e-12),
    }


def classifier_outputs(
    model, params0: PyTree, params: PyTree, batch_stats: PyTree, images: jax.Array
) -> tuple[tuple[jax.Array, dict], tuple[jax.Array, dict]]:
    """(network, Taylor model) outputs of a codebase classifier in eval mode, each a pair
    (logits, {"features": penultimate features}); BatchNorm statistics are held fixed."""

    def fn(p, x):
        return model.apply({"params": p, "batch_stats": batch_stats}, x, train=False)

    return fn(params, images), taylor_model(fn, params0, params, images)


# ----------------------------------------------------------------------------- runs
def make_taylor_sums(model, normalize: str) -> Callable[[dict, dict, dict], dict]:
    """`(v0, v, batch) -> sums` over the masked batch, for network vs Taylor model around v0:
    agreement, correct predictions of each, squared norms of logits, features and their gaps.

    The Taylor model is in the parameters; BatchNorm statistics are v0's for it and v's for
    the network (identical when fine-tuning freezes them, as every fine-tuning config does).
    """

    def sums(v0: dict, v: dict, batch: dict) -> dict:
        images = pixels.normalize(batch["image"], normalize)
        mask = batch["mask"].astype(jnp.float32)

        def fn(p, x, stats):
            return model.apply({"params": p, "batch_stats": stats}, x, train=False)

        net, net_aux = fn(v["params"], images, v["batch_stats"])
        lin, lin_aux = taylor_model(
            lambda p, x: fn(p, x, v0["batch_stats"]), v0["params"], v["params"], images
        )
        a, b = jnp.argmax(net, -1), jnp.argmax(lin, -1)

        def sq(x):
            return jnp.sum(jnp.square(x).reshape(x.shape[0], -1).sum(-1) * mask)

        return {
            "count": mask.sum(),
            "agree": jnp.sum((a == b) * mask),
            "network_correct": jnp.sum((a == batch["label"]) * mask),
            "taylor_correct": jnp.sum((b == batch["label"]) * mask),
            "logits_sq": sq(net),
            "logits_gap_sq": sq(net - lin),
            "features_sq": sq(net_aux["features"]),
            "features_gap_sq": sq(net_aux["features"] - lin_aux["features"]),
        }

    return sums


def ratios(sums: dict) -> dict:
    """Split-level measurements from accumulated sums: agreement, both accuracies, and the
    relative distances ‖f − f_lin‖ / ‖f‖ of logits and of features (Frobenius over the split)."""
    n = max(float(sums["count"]), 1.0)
    rel = lambda gap, ref: float(np.sqrt(sums[gap] / max(float(sums[ref]), 1e-30)))  # noqa: E731
    return {
        "agreement": float(sums["agree"]) / n,
        "network_accuracy": float(sums["network_correct"]) / n,
        "taylor_accuracy": float(sums["taylor_correct"]) / n,
        "logits_relative_distance": rel("logits_gap_sq", "logits_sq"),
        "features_relative_distance": rel("features_gap_sq", "features_sq"),
        "num_examples": int(round(float(sums["count"]))),
    }


def taylor_measurements(
    sums_fn,
    v0: dict,
    v: dict,
    data: pipeline.DomainData,
    batch_size: int,
    mesh,
    max_examples: int | None = None,
) -> list[dict]:
    """Network vs its Taylor model around v0 on the in and out split of every domain: one row
    per split (domain, split, is_test_domain and the measurements of `ratios`)."""
    rows = []
    for split in data.splits:
        total = None
        for batch in pipeline.eval_batches(split, batch_size, max_examples):
            s = sums_fn(v0, v, parallel.global_batch(parallel.host_slice(batch), mesh))
            s = {k: np.float64(x) for k, x in jax.device_get(s).items()}
            total = s if total is None else {k: total[k] + s[k] for k in total}
        rows.append(
            {
                "domain": split.domain,
                "split": split.split,
                "is_test_domain": split.is_test_domain,
                **ratios(total),
            }
        )
    return rows
