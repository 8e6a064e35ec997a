"""DomainBed's photo datasets (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet) as DomainBed
lays them out, and the checks that need no TensorFlow: which folders, domains and classes,
how many images, where a prepared copy lives in a TFDS data dir.

The TFDS builders that read these folders are in domainbed.py (which re-exports these names);
this module imports nothing heavy (no TensorFlow, TFDS, PIL or JAX), so the preflight checks a
run's dataset before any of them is imported.

DomainBed's conventions are kept so that `test_domains=0` means what it means in DomainBed and
in the paper (Zhang & Bottou 2024): domains are the sorted domain folders, classes the sorted
class folders, and a domain's images are in torchvision ImageFolder's order (sorted walk),
which DomainBed's in/out split indices refer to. A missing domain or class folder is an error
naming it. Each domain's image files are counted and checked against DomainBed's
(`Spec.counts`; TerraIncognita: the total) before a build.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
from etils import epath

# torchvision's ImageFolder extensions (IMG_EXTENSIONS), matched case-insensitively as it does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_DOWNLOAD = (
    "Get it with `python -m richft_jax.data.prepare --dataset={name} [--data_dir=D]` (downloads "
    "the archives DomainBed's script downloads and prepares it in D), or with DomainBed's "
    "download script (github.com/facebookresearch/DomainBed): `python -m "
    "domainbed.scripts.download --data_dir=DIR`, then point --config.data.manual_dir at DIR "
    "(or copy {folder}/ to <data_dir>/downloads/manual/)."
)
# The TFDS builders' version (domainbed.DomainBedBuilder.VERSION): a prepared copy is in
# <data_dir>/domainbed_<name>/<config>/<version>/.
TFDS_VERSION = "2.0.0"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What DomainBed defines of one dataset: its folder, domains, classes."""

    name: str  # Dataset name in this project (config.data.name).
    folder: str  # DomainBed's folder under its data root.
    domains: tuple[str, ...]  # DomainBed's domain order (sorted folder names).
    num_classes: int
    classes: tuple[str, ...] | None = None  # Known class folders (sorted); None: read them.
    # DomainBed's image files per domain, in `domains` order (docs/datasets_and_weights.md
    # says where each figure comes from); None: not published per domain, `total` only.
    counts: tuple[int, ...] | None = None
    total: int | None = None  # All domains together.

    @property
    def splits(self) -> tuple[str, ...]:
        """TFDS split (and domain) names: the folders with spaces as "_" ("Real_World")."""
        return tuple(split_name(d) for d in self.domains)


def split_name(folder: str) -> str:
    r"""A domain folder's TFDS split name: TFDS's file names allow only [\w-] in splits."""
    return folder.replace(" ", "_")


SPECS = {
    s.name: s
    for s in (
        Spec(
            "pacs",
            "PACS",
            ("art_painting", "cartoon", "photo", "sketch"),
            7,
            ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
            counts=(2048, 2344, 1670, 3929),
            total=9991,
        ),
        Spec(
            "vlcs",
            "VLCS",
            ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
            5,
            ("bird", "car", "chair", "dog", "person"),
            counts=(1415, 2656, 3282, 3376),
            total=10729,
        ),
        Spec(
            "office_home",
            "office_home",
            ("Art", "Clipart", "Product", "Real World"),
            65,
            counts=(2427, 4365, 4439, 4357),
            total=15588,
        ),
        Spec(
            "terra_incognita",
            "terra_incognita",
            ("location_100", "location_38", "location_43", "location_46"),
            10,
            (
                "bird",
                "bobcat",
                "cat",
                "coyote",
                "dog",
                "empty",
                "opossum",
                "rabbit",
                "raccoon",
                "squirrel",
            ),
            total=24788,  # DomainBed's paper; not published per location.
        ),
        Spec(
            "domainnet",
            "domain_net",
            ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
            345,
            counts=(48129, 51605, 72266, 172500, 172947, 69128),
            total=586575,
        ),
    )
}


def find_root(manual_dir: epath.PathLike, spec: Spec) -> epath.Path:
    """The dataset's folder: `<manual_dir>/<DomainBed folder>`, or manual_dir itself if it
    holds the domain folders; a FileNotFoundError with the expected layout otherwise."""
    root = locate(manual_dir, spec)
    if root is None:
        raise FileNotFoundError(not_found(manual_dir, spec) + " " + how_to_get(spec))
    return root


def locate(manual_dir: epath.PathLike, spec: Spec) -> epath.Path | None:
    """`find_root`'s folder, or None (only looks: the preflight's check)."""
    manual_dir = epath.Path(manual_dir)
    for candidate in (manual_dir / spec.folder, manual_dir):
        if candidate.is_dir() and any((candidate / d).is_dir() for d in spec.domains):
            return candidate
    return None


def not_found(manual_dir: epath.PathLike, spec: Spec) -> str:
    """What `find_root` looked for in `manual_dir` and did not find."""
    folder = epath.Path(manual_dir) / spec.folder
    return (
        f"DomainBed dataset {spec.name!r} not found: expected {folder}/ with "
        f"one folder per domain {list(spec.domains)}, each with one folder per class "
        f"(e.g. {spec.folder}/{spec.domains[0]}/<class>/<image>.jpg)."
    )


def how_to_get(spec: Spec) -> str:
    """How to get the dataset's folder: what the not-found errors and the preflight say."""
    return _DOWNLOAD.format(folder=spec.folder, name=spec.name)


def _subdirs(path: epath.Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def check_layout(root: epath.Path, spec: Spec) -> tuple[str, ...]:
    """Checks every domain folder and its class folders; returns the class names in order.

    ImageFolder numbers each domain's classes by its sorted folders, so every domain must hold
    the same class folders, or a label would mean different classes in different domains.
    """
    missing = [d for d in spec.domains if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"DomainBed dataset {spec.name!r}: domain folder(s) {missing} missing in {root} "
            f"(expected {list(spec.domains)})."
        )
    found = {d: _subdirs(root / d) for d in spec.domains}
    classes = spec.classes or tuple(sorted(set().union(*found.values())))
    for domain, names in found.items():
        absent = sorted(set(classes) - set(names))
        if absent:
            raise FileNotFoundError(
                f"DomainBed dataset {spec.name!r}: class folder(s) {absent} missing in "
                f"{root / domain}."
            )
        extra = sorted(set(names) - set(classes))
        if extra:
            raise ValueError(
                f"DomainBed dataset {spec.name!r}: unexpected class folder(s) {extra} in "
                f"{root / domain} (classes are {list(classes)})."
            )
    if len(classes) != spec.num_classes:
        raise ValueError(
            f"DomainBed dataset {spec.name!r}: {len(classes)} class folders in {root} "
            f"{list(classes)}, expected {spec.num_classes}."
        )
    return tuple(classes)


def image_files(class_dir: epath.Path) -> list[str]:
    """Image paths under a class folder in torchvision ImageFolder's order (sorted walk)."""
    files = []
    for dirpath, _, names in sorted(os.walk(os.fspath(class_dir), followlinks=True)):
        files += [
            os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return files


# ----------------------------------------------------------------------------- image counts
PREPARE = "python -m richft_jax.data.prepare"
ALLOW_COUNT_MISMATCH = "--allow_count_mismatch"  # prepare's override for deliberate subsets.


class CountMismatchError(ValueError):
    """A dataset's image files are not as many as DomainBed's (a partial download or copy)."""


def count_images(root: epath.Path, spec: Spec, classes: tuple[str, ...]) -> dict[str, int]:
    """{domain: image files in it}, as ImageFolder counts them (every class, nested too)."""
    return {d: sum(len(image_files(root / d / c)) for c in classes) for d in spec.domains}


def count_mismatches(spec: Spec, found: dict[str, int]) -> list[str]:
    """ "domain X: N images, DomainBed's M" for each domain (or the total, where only that is
    published) whose count differs from DomainBed's."""
    wrong = []
    for domain, expected in zip(spec.domains, spec.counts or (), strict=False):
        if found[domain] != expected:
            wrong.append(f"domain {domain!r}: {found[domain]:,} images, DomainBed's {expected:,}")
    total = sum(found.values())
    if spec.counts is None and spec.total is not None and total != spec.total:
        wrong.append(f"all domains: {total:,} images, DomainBed's {spec.total:,}")
    return wrong


def check_counts(spec: Spec, found: dict[str, int], where: object, allow: bool = False) -> None:
    """Raises CountMismatchError naming each domain whose count differs from DomainBed's, both
    counts, and the override; with `allow` (a deliberate subset) only logs them."""
    wrong = count_mismatches(spec, found)
    if not wrong:
        return
    if allow:
        logging.warning(
            "DomainBed dataset %r in %s differs from DomainBed's (%s): built as it is (%s).",
            spec.name,
            where,
            "; ".join(wrong),
            ALLOW_COUNT_MISMATCH,
        )
        return
    raise CountMismatchError(
        f"DomainBed dataset {spec.name!r} in {where}: {'; '.join(wrong)}. A partial download "
        f"or copy? Get it whole with `{PREPARE} --dataset={spec.name}`. A deliberate subset: "
        f"build it once with `{PREPARE} --dataset={spec.name} --manual_dir=DIR "
        f"{ALLOW_COUNT_MISMATCH}` (and the runs' --data_dir); runs then use that build."
    )


# ----------------------------------------------------------------------------- the source
class SourceMismatchError(ValueError):
    """A prepared dataset asked for with another source (manual dir) than it was built from."""


def source_of(manual_dir: epath.PathLike, spec: Spec) -> str:
    """The source a manual dir stands for: the real path of the dataset's folder in it (where
    `find_root` finds it, else `<manual_dir>/<folder>`)."""
    root = locate(manual_dir, spec)
    return os.path.realpath(os.fspath(root or epath.Path(manual_dir) / spec.folder))


# ----------------------------------------------------------------------------- TFDS names
def config_name(skip_unreadable: bool) -> str:
    """The builder config of `config.data.skip_unreadable`."""
    return "skip_unreadable" if skip_unreadable else "domainbed"


def builder_name(spec: Spec) -> str:
    """The TFDS builder's name of the dataset (its directory in a TFDS data dir)."""
    return f"domainbed_{spec.name}"
