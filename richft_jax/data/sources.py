"""Loads the prepared TFDS datasets of this project into memory as numpy arrays, per split.

The datasets' names, domains and the checks that need no data are in catalog.py (no
TensorFlow: the preflight reads them), re-exported here; `check_catalog` holds the builders to
its TFDS names and versions when this module is imported.

Images are decoded and resized once, at load, to the configured square size (the paper's eval
"resize to 224"; training augmentation then works on these arrays); a later load of the same
prepared files in the same process gets the same arrays, read-only (up to DECODED_CACHE_BYTES).
Everything is held in memory as uint8: N x size^2 x 3 bytes, at 224 px about 150 KB an image,
so PACS takes 1.5 GB, VLCS 1.6 GB, OfficeHome 2.3 GB, TerraIncognita 3.7 GB, and DomainNet
(586k images) 88 GB: too much for most hosts, so run DomainNet at a smaller data.image_size or on
a large-memory host.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from richft_jax import config_checks, paths, tf_cpu
from richft_jax.data import catalog, digits_domains, domainbed, glyphs, letters, mnist_family
from richft_jax.data.catalog import (  # noqa: F401  (re-exported: sources.domains_of, ...)
    OFFICIAL,
    check_image_size,
    check_name,
    domains_of,
    has_official_splits,
)

tf = tf_cpu.tf()

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "digits_domains": digits_domains.DigitsDomains,
    "letters": letters.Letters,
    "glyphs": glyphs.Glyphs,
    **domainbed.BUILDERS,
    **mnist_family.BUILDERS,
}
VARIABLE_SIZE_DEFAULT = 224  # The paper's resolution, for datasets of variable-size photos.
# Decoded domains a process keeps for its later loads of the same prepared files (tests,
# notebooks and analyses run several runs of one dataset in one process; each decode of the
# demo's digits takes ~0.8 s on 2 cores): at most this many bytes, least recently used first out.
DECODED_CACHE_BYTES = 512 << 20
_decoded: collections.OrderedDict[tuple, tuple[tuple, tuple[np.ndarray, np.ndarray]]]
_decoded = collections.OrderedDict()


def check_catalog(builders: dict[str, type[tfds.core.GeneratorBasedBuilder]]) -> None:
    """Raises a ValueError naming each builder that catalog.TFDS_BUILDERS lacks or names with
    another TFDS name or version (where the preflight looks for a prepared copy), and each
    entry there without a builder."""
    what = "sources.BUILDERS and catalog.TFDS_BUILDERS (the TFDS name and version of each dataset)"
    config_checks.check_table(
        what, builders, catalog.TFDS_BUILDERS, lambda b: (b.name, str(b.VERSION))
    )


check_catalog(BUILDERS)


def num_classes_of(name: str) -> int:
    """Number of classes of a dataset, read from its builder's features (no data needed)."""
    check_name(name)
    if name in OFFICIAL:
        return domainbed.SPECS["domainnet"].num_classes
    return BUILDERS[name].num_classes


def make_builder(
    name: str, data_dir: str | None = None, skip_unreadable: bool = False
) -> tfds.core.DatasetBuilder:
    """The dataset's builder as `builder_of` makes it, not prepared (`is_prepared()` says
    whether it is: the preflight's check); nothing is written."""
    check_name(name)
    kwargs = {}
    if name in domainbed.BUILDERS:
        kwargs["config"] = domainbed.config_name(skip_unreadable)
    return BUILDERS[name](data_dir=data_dir, **kwargs)


def builder_of(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    skip_unreadable: bool = False,
    allow_count_mismatch: bool = False,
    urls: Sequence[str] = (),
) -> tfds.core.DatasetBuilder:
    """Returns the dataset's builder, preparing it on disk first if that was never done.

    `skip_unreadable` (DomainBed photo sets only; the others are not read from image files):
    its own builder config, prepared apart, as it may keep fewer files (see domainbed.py).
    DomainBed photo sets are checked against DomainBed's image counts when built (unless
    `allow_count_mismatch`: a deliberate subset) and record their source (`manual_dir`, and the
    `urls` its files came from); a prepared one asked for with another `manual_dir` is an error.
    """
    builder = make_builder(name, data_dir, skip_unreadable)
    photos = name in domainbed.BUILDERS
    if photos:
        builder.allow_count_mismatch = allow_count_mismatch
        builder.source_urls = tuple(urls)
    if builder.is_prepared():
        if photos and manual_dir is not None:
            domainbed.check_source(builder, manual_dir)
        return builder
    logging.info("Preparing TFDS dataset %s into %s (once)", name, builder.data_dir)
    # Generated locally: never ask GCS for a prepared copy (there is none, and no network).
    config = tfds.download.DownloadConfig(try_download_gcs=False, manual_dir=manual_dir)
    builder.download_and_prepare(download_config=config)
    return builder


def _resize(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 images [..., H, W, C] to [..., size, size, C]: bilinear with antialiasing, as
    torchvision's Resize on PIL images."""
    if images.shape[-3] == size and images.shape[-2] == size:
        return images
    resized = tf.image.resize(images, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _decode_resize(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """An encoded JPEG/PNG to uint8 [size, size, 3]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return _resize(image, size)


def read_split(
    builder: tfds.core.DatasetBuilder, split: str, size: int, label_map: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One split decoded and resized into preallocated uint8 [N, size, size, 3] (never all
    encoded and decoded copies at once), labels int32 (mapped through label_map if given)."""
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    n = int(ds.cardinality())  # Known for prepared TFDS splits; else (< 0) grown batch by batch.
    ds = ds.map(
        tf.autograph.experimental.do_not_convert(
            lambda ex: (_decode_resize(ex["image"], size), ex["label"])
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).batch(256)
    ds = ds.with_options(tf_cpu.data_options())
    if n < 0:
        batches = [(np.empty((0, size, size, 3)), np.empty((0,)))]
        batches += list(ds.as_numpy_iterator())
        images = np.concatenate([x for x, _ in batches]).astype(np.uint8)
        labels = np.concatenate([y for _, y in batches]).astype(np.int32)
    else:
        images = np.empty((n, size, size, 3), np.uint8)
        labels = np.empty((n,), np.int32)
        i = 0
        for x, y in ds.as_numpy_iterator():
            images[i : i + len(y)], labels[i : i + len(y)] = x, y
            i += len(y)
        if i != n:
            raise RuntimeError(f"{builder.name}/{split}: read {i} examples, expected {n}.")
    if label_map is not None:
        labels = label_map[labels].astype(np.int32)
    return images, labels


def load_arrays(
    name: str,
    data_dir: str | None = None,
    domains: Sequence[str] | None = None,
    image_size: int | None = None,
    manual_dir: str | None = None,
    skip_unreadable: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the requested splits into memory: {split: (images uint8 NHWC, labels int32)},
    images decoded and resized to `image_size` (None: the dataset's own size if fixed, else
    VARIABLE_SIZE_DEFAULT); `skip_unreadable` as in builder_of. Arrays this process already
    decoded from the same local files come back as they were (read-only: `_decoded_once`)."""
    valid = domains_of(name)
    domains = valid if domains is None else tuple(domains)
    unknown = [d for d in domains if d not in valid]
    if unknown:
        raise ValueError(f"Unknown domain(s) {unknown} of dataset {name!r}; valid: {list(valid)}.")
    if name in OFFICIAL:
        raise ValueError(f"Dataset {name!r} has official splits: use load_official_splits.")
    check_image_size(image_size)
    builder = builder_of(name, data_dir, manual_dir, skip_unreadable)
    native = builder.info.features["image"].shape[0]  # None: variable-size photos.
    size = image_size or native or VARIABLE_SIZE_DEFAULT

    def read(domain: str) -> tuple[np.ndarray, np.ndarray]:
        if not native:
            return read_split(builder, domain, size)
        data = tfds.as_numpy(builder.as_dataset(split=domain, batch_size=-1, shuffle_files=False))
        images = np.asarray(_resize(tf.constant(data["image"]), size), np.uint8)
        return images, np.asarray(data["label"], np.int32)

    return {d: _decoded_once(builder.data_dir, d, size, lambda d=d: read(d)) for d in domains}


def _decoded_once(
    prepared: str, domain: str, size: int, read: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """`read()`, or the read-only arrays an earlier call read from the same files of the local
    prepared dataset directory `prepared` (their names, sizes and modification times)."""
    files = _files_of(prepared)
    key = (prepared, domain, size)
    if files is not None and key in _decoded and _decoded[key][0] == files:
        _decoded.move_to_end(key)
        return _decoded[key][1]
    arrays = read()
    if files is not None and sum(a.nbytes for a in arrays) <= DECODED_CACHE_BYTES:
        for a in arrays:
            a.flags.writeable = False  # Shared by every later load: no caller may write to it.
        _decoded[key] = (files, arrays)
        while sum(a.nbytes for _, v in _decoded.values() for a in v) > DECODED_CACHE_BYTES:
            _decoded.popitem(last=False)
    return arrays


def _files_of(directory: str) -> tuple | None:
    """(name, size, mtime) of each file in a local directory; None for a URL (gs://...) or a
    directory that cannot be listed (the read then says what is wrong)."""
    if paths.is_remote(directory):
        return None
    try:
        with os.scandir(directory) as entries:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries))
    except OSError:
        return None


def load_official_splits(
    name: str, data_dir: str | None = None, image_size: int | None = None
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """{domain: {"in": official train, "out": official test}} of a catalog dataset, labels
    renumbered to DomainBed's class order (sorted class names, as ImageFolder)."""
    check_name(name)
    if name not in OFFICIAL:
        raise ValueError(f"Dataset {name!r} has no official splits; valid: {sorted(OFFICIAL)}.")
    check_image_size(image_size)
    size = image_size or VARIABLE_SIZE_DEFAULT
    out = {}
    for domain in domains_of(name):
        builder = tfds.builder(f"{OFFICIAL[name]}/{domain}", data_dir=data_dir)
        if not builder.is_prepared():
            logging.info("Preparing TFDS dataset %s into %s (once)", builder.name, data_dir)
            builder.download_and_prepare()
        names = builder.info.features["label"].names
        label_map = np.asarray([sorted(names).index(n) for n in names], np.int32)
        out[domain] = {
            "in": read_split(builder, "train", size, label_map),
            "out": read_split(builder, "test", size, label_map),
        }
    return out
