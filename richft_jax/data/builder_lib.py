"""What the project's generated TFDS builders share: image/label features and example keys,
and the rendered sets' (letters, glyphs) split generation and builder methods."""

import sys
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from richft_jax import tf_cpu
from richft_jax.data import catalog, render

tf_cpu.tf()  # TFDS imports TensorFlow when it builds: hide the accelerators from it first.


def image_label_info(
    builder: tfds.core.GeneratorBasedBuilder,
    label: tfds.features.ClassLabel,
    image_size: int,
    description: str,
) -> tfds.core.DatasetInfo:
    """DatasetInfo of an (image uint8 HxWx3, label) dataset kept in generation order."""
    return builder.dataset_info_from_configs(
        description=description,
        features=tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(image_size, image_size, 3)), "label": label}
        ),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Keep generation order: DomainBed split indices refer to it.
    )


def examples(images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[int, dict]]:
    """(index, example) pairs of one split, in order."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        yield i, {"image": image, "label": int(label)}


def rendered_split(
    name: str,
    split: str,
    classes: Sequence[str],
    seed: int,
    split_sizes: dict[str, int],
    image_size: int,
    fonts: Sequence[str] | None = None,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of a rendered set, deterministically (split i draws from default_rng([seed,
    i])): balanced shuffled labels int64 [N], their glyphs rendered heavy, uint8 [N, S, S, 3]."""
    if split not in split_sizes:
        raise ValueError(f"Unknown {name} split {split!r}; valid splits are {list(split_sizes)}.")
    rng = np.random.default_rng([seed, list(split_sizes).index(split)])
    n = split_sizes[split] if n is None else n
    labels = rng.permutation(np.arange(n) % len(classes))  # Balanced classes, shuffled.
    chars = [classes[label] for label in labels]
    images = render.render_glyphs(chars, rng, image_size, strength="heavy", fonts=fonts)
    return images, labels.astype(np.int64)


class RenderedSplits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builder of a rendered set from what its module defines: CLASSES, IMAGE_SIZE, SPLIT_SIZES,
    generate_split(split) and its docstring (the description); read when building."""

    VERSION = tfds.core.Version(catalog.GENERATED_VERSION)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Set explicitly: TFDS would otherwise derive it through importlib_resources, which is
        # not a declared dependency of tensorflow-datasets and may be missing.
        cls.code_path = epath.Path(sys.modules[cls.__module__].__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        """Describes the features: an RGB image and a label named by the module's CLASSES."""
        module = self._module()
        label = tfds.features.ClassLabel(names=list(module.CLASSES))
        return image_label_info(self, label, module.IMAGE_SIZE, module.__doc__)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """The module's splits (train and test); nothing is downloaded."""
        del dl_manager
        return {split: self._generate_examples(split) for split in self._module().SPLIT_SIZES}

    def _generate_examples(self, split: str):
        """Yields (index, example) pairs of one split."""
        yield from examples(*self._module().generate_split(split))

    @classmethod
    def _module(cls):
        """The module that defines the builder (and its classes, sizes and generator)."""
        return sys.modules[cls.__module__]
