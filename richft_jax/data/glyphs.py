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
    return builder_lib.rendered_split(
        "glyphs", split, CLASSES, SEED, SPLIT_SIZES, IMAGE_SIZE, fonts=fonts(), n=n
    )


class Glyphs(builder_lib.RenderedSplits):
    """TFDS builder for the rendered-glyphs pretraining set (train and test splits)."""

    name = "glyphs"
    num_classes = len(CLASSES)
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 98 classes (52 Latin, 21 symbols, 25 Greek), 200,000 "
        "train, 8,000 test."
    }
