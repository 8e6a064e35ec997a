"""What the project's generated TFDS builders share: image/label features and example keys."""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from richft_jax import tf_cpu

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
