"""Label noise injected into the training domains (the noisy-label settings of Li & Zhang 2021).

symmetric: a chosen fraction of the examples gets a label drawn uniformly from the *other*
classes; pairwise (class-dependent): that fraction gets the next class, y -> (y + 1) mod K,
so the corruption depends on the class, as a confusion between neighbouring classes. Exactly
round(rate * n) examples of each training domain's "in" split change label, chosen by a seeded
generator (seed, domain index): the evaluation splits, and the test domain, stay clean.
"""

import dataclasses

import ml_collections
import numpy as np

from richft_jax import config_checks
from richft_jax.data import pipeline
from richft_jax.methods.method import Method


def corrupt_labels(
    labels: np.ndarray, num_classes: int, kind: str, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """A copy of `labels` with exactly round(rate * n) of them changed to a different class."""
    config_checks.check_label_noise(kind, rate)
    labels = np.asarray(labels)
    noisy = labels.copy()
    if kind == "none" or rate == 0.0:
        return noisy
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}.")
    idx = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    if kind == "symmetric":
        shift = rng.integers(1, num_classes, size=len(idx))  # Never 0: always another class.
    else:
        shift = np.ones(len(idx), labels.dtype)
    noisy[idx] = (labels[idx] + shift) % num_classes
    return noisy.astype(labels.dtype)


def apply_label_noise(
    data: pipeline.DomainData, kind: str, rate: float, seed: int
) -> pipeline.DomainData:
    """`data` with the training domains' "in" splits' labels corrupted; other splits as they are."""
    config_checks.check_label_noise(kind, rate)
    if kind == "none" or rate == 0.0:
        return data
    splits = []
    for s in data.splits:
        if s.split == "in" and not s.is_test_domain:
            rng = np.random.default_rng([seed, data.domains.index(s.domain)])
            s = dataclasses.replace(
                s, labels=corrupt_labels(s.labels, data.num_classes, kind, rate, rng)
            )
        splits.append(s)
    return dataclasses.replace(data, splits=tuple(splits))


def method(config: ml_collections.ConfigDict) -> Method:
    """Corrupts the training splits' labels as `config.label_noise` says (validated even when
    off, so a bad kind is refused before any work)."""
    noise = config.label_noise
    return Method(
        name="label_noise",
        transform_data=lambda data: apply_label_noise(data, noise.kind, noise.rate, noise.seed),
    )
