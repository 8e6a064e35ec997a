"""Glyphs: a synthetic 98-class pretraining set, richer than letters: Latin and Greek letters
and ASCII symbols.

Classes, in label order (98):
- the 52 Latin letters of `letters`: 'A'..'Z' then 'a'..'z';
- 21 ASCII symbols: ! # $ % & ( ) * + - < = > ? @ [ ] ^ { } ~ (left out: the tiny marks
  . , ' ` " : ; and the bars | / \\ _, which are look-alikes of '1', 'l' or '-' or too small
  to tell apart at 32x32);
- 25 Greek letters that look like no Latin letter or digit: Γ Δ Λ Ξ Π Σ Φ Ψ Ω (upper case)
  and α β γ δ ε ζ η λ μ ξ π ρ σ φ ψ ω (lower case). Θ and θ are left out: a barred '0', more
  like the digit (intersection over union of the centred glyphs up to 0.87 and 0.92 in the
  fonts below) than any Latin letter is (O and '0': 0.85); the classes kept here stay under
  0.8 (tests/test_glyphs.py).
None is a digit, so the classes stay disjoint from the digits the backbone is fine-tuned on.

Each image is a 32x32 RGB rendering with the letters' heavy augmentation
(`render.render_glyphs(..., strength="heavy")`), in one of the fonts that draw every class as
a distinct, non-blank glyph (`fonts()`; every class draws from the same fonts, so the font
never tells the class): of matplotlib 3.11's bundled fonts, 16 qualify (DejaVu Sans, Sans
Mono and Serif in four styles each, and STIXGeneral in four; the Computer Modern fonts the
letters also use have no Greek). 200,000 train and 8,000 test images, balanced over the
classes; generated offline, deterministically, with disjoint random streams per split.
"""

from __future__ import annotations

import string

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from richft_jax.data import builder_lib, catalog, render

LATIN = string.ascii_uppercase + string.ascii_lowercase
SYMBOLS = "!#$%&()*+-<=>?@[]^{}~"
GREEK = "ΓΔΛΞΠΣΦΨΩαβγδεζηλμξπρσφψω"
CLASSES = tuple(LATIN + SYMBOLS + GREEK)
IMAGE_SIZE = 32
SEED = 20261203  # Split i draws from default_rng([SEED, i]).
SPLIT_SIZES = dict(zip(catalog.GLYPHS_SPLITS, (200_000, 8_000), strict=True))


def fonts() -> list[str]:
    """The font files that render every class as a distinct, non-blank glyph (none alike)."""
    return render.font_paths("".join(CLASSES), lookalikes=0)


def generate_split(split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generates one split deterministically: images uint8 [N, 32, 32, 3], labels int64 [N];
    `n` (tests: seconds, not minutes) makes it n images long, from the split's random stream."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"Unknown glyphs split {split!r}; valid splits are {list(SPLIT_SIZES)}.")
    rng = np.random.default_rng([SEED, list(SPLIT_SIZES).index(split)])
    n = SPLIT_SIZES[split] if n is None else n
    labels = rng.permutation(np.arange(n) % len(CLASSES))  # Balanced classes, shuffled.
    chars = [CLASSES[label] for label in labels]
    images = render.render_glyphs(chars, rng, IMAGE_SIZE, strength="heavy", fonts=fonts())
    return images, labels.astype(np.int64)


class Glyphs(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for the rendered-glyphs pretraining set (train and test splits)."""

    name = "glyphs"
    num_classes = len(CLASSES)
    # Set explicitly: TFDS would otherwise derive it through importlib_resources, which is not
    # a declared dependency of tensorflow-datasets and may be missing.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version(catalog.GENERATED_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 98 classes (52 Latin, 21 symbols, 25 Greek), 200,000 "
        "train, 8,000 test."
    }

    def _info(self) -> tfds.core.DatasetInfo:
        """Describes the features: a 32x32 RGB image and a 98-way named label."""
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
