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
import tensorflow_datasets as tfds
from etils import epath

from richft_jax.data import builder_lib, catalog, render

CLASSES = tuple(string.ascii_uppercase + string.ascii_lowercase)
IMAGE_SIZE = 32
SEED = 20240612  # Split i draws from default_rng([SEED, i]).
SPLIT_SIZES = dict(zip(catalog.LETTERS_SPLITS, (40_000, 4_000), strict=True))


def generate_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Generates one split deterministically: images uint8 [N, 32, 32, 3], labels int64 [N]."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"Unknown letters split {split!r}; valid splits are {list(SPLIT_SIZES)}.")
    rng = np.random.default_rng([SEED, list(SPLIT_SIZES).index(split)])
    n = SPLIT_SIZES[split]
    labels = rng.permutation(np.arange(n) % len(CLASSES))  # Balanced classes, shuffled.
    chars = [CLASSES[label] for label in labels]
    images = render.render_glyphs(chars, rng, IMAGE_SIZE, strength="heavy")
    return images, labels.astype(np.int64)


class Letters(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for the rendered-letters pretraining set (train and test splits)."""

    name = "letters"
    num_classes = len(CLASSES)
    # Set explicitly: TFDS would otherwise derive it through importlib_resources, which is not
    # a declared dependency of tensorflow-datasets and may be missing.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version(catalog.GENERATED_VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release: 52 letter classes, 40,000 train, 4,000 test."}

    def _info(self) -> tfds.core.DatasetInfo:
        """Describes the features: a 32x32 RGB image and a 52-way named label."""
        return builder_lib.image_label_info(
            self, tfds.features.ClassLabel(names=list(CLASSES)), IMAGE_SIZE, __doc__
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """The train and test splits; nothing is downloaded."""
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        """Yields (index, example) pairs of one split."""
        yield from builder_lib.examples(*generate_split(split))
