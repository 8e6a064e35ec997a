"""The datasets a config can name, without TensorFlow: each one's domains (its splits), the
checks of config.data that need no data, and where a prepared copy lives in a TFDS data dir.

The domains and versions are defined here once (DomainBed's in domainbed_layout.py): the TFDS
builders (digits_domains.py, letters.py, glyphs.py, mnist_family.py, domainbed.py) take them
from here, and sources.py checks when imported that its builders are the ones TFDS_BUILDERS names.
sources.py and pipeline.py (which load the data through TFDS and tf.data) take the checks from
here and re-export them. This module imports nothing heavy (no TensorFlow, TFDS or JAX), so
the preflight checks a config's dataset, test domains and image size, and whether a dataset is
prepared, before any of those is imported.
"""

import os
from collections.abc import Sequence

from etils import epath

from richft_jax.data import domainbed_layout as layout

DIGITS_DOMAINS = ("mnist", "mnist_m", "digits", "syn")  # digits_domains.py
LETTERS_SPLITS = ("train", "test")  # letters.py
GLYPHS_SPLITS = ("train", "test")  # glyphs.py
ROTATED_ANGLES = (0, 15, 30, 45, 60, 75)  # mnist_family.py: RotatedMNIST's domains, in degrees.
ROTATED_DOMAINS = tuple(f"{a}deg" for a in ROTATED_ANGLES)  # Not bare digits: those mean indices.
COLORED_DOMAINS = ("plus90", "plus80", "minus90")  # DomainBed's "+90%", "+80%", "-90%".
# The TFDS version of the builders of digits_domains.py, letters.py, glyphs.py and mnist_family.py
# (DomainBed's: layout.TFDS_VERSION).
GENERATED_VERSION = "1.0.0"

# Every dataset's split names in order: its domains (train/test for letters and glyphs).
SPLITS: dict[str, tuple[str, ...]] = {
    "digits_domains": DIGITS_DOMAINS,
    "letters": LETTERS_SPLITS,
    "glyphs": GLYPHS_SPLITS,
    **{name: spec.splits for name, spec in layout.SPECS.items()},
    "rotated_mnist": ROTATED_DOMAINS,
    "rotated_mnist_embedded": ROTATED_DOMAINS,
    "colored_mnist": COLORED_DOMAINS,
    "colored_mnist_embedded": COLORED_DOMAINS,
}
# Datasets from TFDS's catalog with predefined per-domain splits used as DomainBed's in/out:
# TFDS's `domainnet` (official train/test lists of the DomainNet paper; not DomainBed's
# random 80/20 split), one TFDS config per domain, in DomainBed's domain order.
OFFICIAL: dict[str, str] = {"domainnet_official": "domainnet"}
SPLITS["domainnet_official"] = layout.SPECS["domainnet"].splits

# (TFDS builder name, version) of the datasets built here (sources.BUILDERS): a prepared copy
# is <data_dir>/<builder>[/<config>]/<version>/ (DomainBed's sets have a config).
TFDS_BUILDERS: dict[str, tuple[str, str]] = {
    **{name: (name, GENERATED_VERSION) for name in SPLITS if name not in layout.SPECS | OFFICIAL},
    **{name: (layout.builder_name(s), layout.TFDS_VERSION) for name, s in layout.SPECS.items()},
}
DATASET_INFO = "dataset_info.json"  # What TFDS's is_prepared() looks for in that directory.


def check_name(name: str) -> None:
    """Raises a ValueError naming an unknown dataset and listing the known ones."""
    if name not in SPLITS:
        raise ValueError(f"Unknown dataset {name!r}; valid datasets are {sorted(SPLITS)}.")


def domains_of(name: str) -> tuple[str, ...]:
    """Returns the split names of a dataset in order (its domains, or train/test)."""
    check_name(name)
    return tuple(SPLITS[name])


def has_official_splits(name: str) -> bool:
    """Whether the dataset comes with its own in/out split per domain (no DomainBed split)."""
    check_name(name)
    return name in OFFICIAL


def check_image_size(image_size: int | None) -> None:
    """Raises a ValueError naming config.data.image_size when it is not a positive size."""
    if image_size is not None and image_size <= 0:
        raise ValueError(f"config.data.image_size={image_size} must be positive.")


def parse_test_domains(spec: str | int | Sequence, domains: Sequence[str]) -> tuple[str, ...]:
    """Turns "syn", "3", "0,2" or [0, "syn"] into domain names, failing on unknown ones."""
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    names = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            index = int(item)
            if not 0 <= index < len(domains):
                raise ValueError(
                    f"config.data.test_domains: index {index} out of range for domains {domains}."
                )
            names.append(domains[index])
        elif item in domains:
            names.append(item)
        else:
            raise ValueError(
                f"config.data.test_domains: unknown domain {item!r}; valid domains are {domains}."
            )
    if len(set(names)) == len(domains):
        raise ValueError("config.data.test_domains: every domain is a test domain; none to train.")
    return tuple(dict.fromkeys(names))


# ----------------------------------------------------------------------------- TFDS data dir
def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> epath.Path:
    """The TFDS data dir a builder made with `data_dir` uses: it, else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets (TFDS's constants.DATA_DIR)."""
    if data_dir is not None:
        return epath.Path(data_dir)
    default = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return epath.Path(os.environ.get("TFDS_DATA_DIR", default))


def manual_dir(data_dir: str | os.PathLike | None = None) -> epath.Path:
    """TFDS's default manual dir of that data dir: <data_dir>/downloads/manual (where its
    download manager looks when no manual dir is given)."""
    return tfds_data_dir(data_dir) / "downloads" / "manual"


def prepared_dir(
    name: str, data_dir: str | os.PathLike | None = None, skip_unreadable: bool = False
) -> epath.Path:
    """Where `sources.make_builder(name, data_dir, skip_unreadable)` keeps the prepared
    dataset: its `data_dir` property, <data_dir>/<builder>[/<config>]/<version>."""
    builder, version = TFDS_BUILDERS[name]
    path = tfds_data_dir(data_dir) / builder
    if name in layout.SPECS:
        path = path / layout.config_name(skip_unreadable)
    return path / version


def is_prepared(
    name: str, data_dir: str | os.PathLike | None = None, skip_unreadable: bool = False
) -> bool:
    """Whether the dataset is prepared there, as the builder's `is_prepared()` says (its
    directory holds dataset_info.json), without importing TFDS; nothing is written."""
    return (prepared_dir(name, data_dir, skip_unreadable) / DATASET_INFO).exists()
