"""Letters: a synthetic 52-class pretraining set of rendered Latin letters.

Upper-case 'A'..'Z' then lower-case 'a'..'z', each a 32x32 RGB image rendered in one of
matplotlib's fonts with heavy augmentation (rotation up to 25 degrees, shear, stretching, thick
strokes, blur, noise, random colours). It stands in for a large pretraining corpus: features
learned on letters transfer to, but are not fitted on, the digits domains. Generated offline,
deterministically, with disjoint random streams for the train and test splits.
"""

from __future__ import annotations

import string

import numpy as np

from richft_jax.data import builder_lib, catalog

CLASSES = tuple(string.ascii_uppercase + string.ascii_lowercase)
IMAGE_SIZE = 32
SEED = 20240612  # Split i draws from default_rng([SEED, i]).
SPLIT_SIZES = dict(zip(catalog.LETTERS_SPLITS, (40_000, 4_000), strict=True))


def generate_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Generates one split deterministically: images uint8 [N, 32, 32, 3], labels int64 [N]."""
    return builder_lib.rendered_split("letters", split, CLASSES, SEED, SPLIT_SIZES, IMAGE_SIZE)


class Letters(builder_lib.RenderedSplits):
    """TFDS builder for the rendered-letters pretraining set (train and test splits)."""

    name = "letters"
    num_classes = len(CLASSES)
    RELEASE_NOTES = {"1.0.0": "Initial release: 52 letter classes, 40,000 train, 4,000 test."}
