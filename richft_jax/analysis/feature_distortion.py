"""Feature distortion: how far fine-tuning moves the penultimate features (Kumar et al. 2022).

LP-FT's explanation of why full fine-tuning can lose out of distribution: the features of the
training distribution change while those of unseen domains change less coherently, distorting
the representation the head relies on. Measured per run between the pretrained and the
fine-tuned backbone, on ID (training domains' out splits) and OOD (test domains' in splits)
data: mean relative L2 distance |f1 - f0| / |f0|, mean cosine similarity, and linear CKA.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from richft_jax import results
from richft_jax.data import pipeline


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two [n, d] representations (Kornblith et al. 2019)."""
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    y = np.asarray(y, np.float64) - np.mean(y, 0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def distortion(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Relative L2 distance, cosine similarity (both averaged over examples) and linear CKA."""
    if before.shape != after.shape:
        raise ValueError(f"feature shapes differ: {before.shape} vs {after.shape}.")
    b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
    nb, na = np.linalg.norm(b, axis=1), np.linalg.norm(a, axis=1)
    eps = 1e-12
    return {
        "relative_l2": float(np.mean(np.linalg.norm(a - b, axis=1) / np.maximum(nb, eps))),
        "cosine": float(np.mean(np.sum(a * b, 1) / np.maximum(na * nb, eps))),
        "cka": linear_cka(b, a),
    }


def split_features(
    features_of: Callable[[Any, dict], Any],
    variables: Any,
    split: pipeline.Split,
    batch_size: int,
    max_examples: int | None,
) -> np.ndarray:
    """Penultimate features [n, d] of a split's first `max_examples` (padding dropped)."""
    out = [
        np.asarray(features_of(variables, batch))[batch["mask"]]
        for batch in pipeline.eval_batches(split, batch_size, max_examples)
    ]
    return np.concatenate(out)


def feature_distortion(
    features_of: Callable[[Any, dict], Any],
    pretrained: Any,
    finetuned: Any,
    data: pipeline.DomainData,
    batch_size: int,
    max_examples: int | None = None,
) -> dict:
    """Per split distortion rows, and their example-weighted means over ID (training domains'
    out splits) and OOD (test domains' in splits)."""
    rows = []
    for s in data.splits:
        before = split_features(features_of, pretrained, s, batch_size, max_examples)
        after = split_features(features_of, finetuned, s, batch_size, max_examples)
        rows.append(
            {
                "domain": s.domain,
                "split": s.split,
                "is_test_domain": s.is_test_domain,
                "num_examples": len(before),
                **distortion(before, after),
            }
        )

    def mean_of(selected):
        n = sum(r["num_examples"] for r in selected)
        keys = ("relative_l2", "cosine", "cka")
        return {k: sum(r[k] * r["num_examples"] for r in selected) / n for k in keys}

    id_rows = [r for r in rows if results.is_id(r)]
    ood_rows = [r for r in rows if results.is_ood(r)]
    return {"id": mean_of(id_rows), "ood": mean_of(ood_rows), "splits": rows}
