"""Loads the prepared TFDS datasets of this project into memory as numpy arrays, per split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from richft_jax.data import digits_domains, letters

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits_domains": digits_domains.DigitsDomains,
    "letters": letters.Letters,
}
_SPLITS = {
    "digits_domains": digits_domains.DOMAINS,
    "letters": tuple(letters.SPLIT_SIZES),
}


def _check_name(name: str) -> None:
    """Raises a ValueError naming an unknown dataset and listing the known ones."""
    if name not in BUILDERS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets are {sorted(BUILDERS)}.")


def domains_of(name: str) -> tuple[str, ...]:
    """Returns the split names of a dataset in order (its domains, or train/test for letters)."""
    _check_name(name)
    return tuple(_SPLITS[name])


def num_classes_of(name: str) -> int:
    """Number of classes of a dataset, read from its builder's features (no data needed)."""
    _check_name(name)
    return BUILDERS[name].num_classes


def builder_of(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns the dataset's builder, preparing it on disk first if that was never done."""
    _check_name(name)
    builder = BUILDERS[name](data_dir=data_dir)
    if not builder.is_prepared():
        logging.info("Preparing TFDS dataset %s into %s (once)", name, builder.data_dir)
        # Generated locally: never ask GCS for a prepared copy (there is none, and no network).
        config = tfds.download.DownloadConfig(try_download_gcs=False)
        builder.download_and_prepare(download_config=config)
    return builder


def load_arrays(
    name: str, data_dir: str | None = None, domains: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the requested splits into memory: {split: (images uint8 NHWC, labels int32)}."""
    valid = domains_of(name)
    domains = valid if domains is None else tuple(domains)
    unknown = [d for d in domains if d not in valid]
    if unknown:
        raise ValueError(f"Unknown domain(s) {unknown} of dataset {name!r}; valid: {list(valid)}.")
    builder = builder_of(name, data_dir)
    arrays = {}
    for domain in domains:
        data = tfds.as_numpy(builder.as_dataset(split=domain, batch_size=-1, shuffle_files=False))
        arrays[domain] = (
            np.asarray(data["image"], np.uint8),
            np.asarray(data["label"], np.int32),
        )
    return arrays
