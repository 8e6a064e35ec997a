"""DomainBed's photo datasets (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet) as TFDS builders.

They read the folders DomainBed's download script leaves (`python -m
domainbed.scripts.download --data_dir=D`, or this project's `python -m richft_jax.data.prepare`),
`<root>/<DOMAIN>/<class>/<image>`, from TFDS's manual dir, and keep DomainBed's conventions so
that `test_domains=0` means what it means in DomainBed and in the paper (Zhang & Bottou 2024):
domains are the sorted domain folders, classes the sorted class folders, and a domain's images
are in torchvision ImageFolder's order (sorted walk), which DomainBed's in/out split indices
refer to. Images are kept as their encoded JPEG/PNG bytes at
their own size; decoding and resizing happen when the data is loaded. A missing domain or class
folder is an error naming it.

Damaged files follow DomainBed, which sets PIL's `ImageFile.LOAD_TRUNCATED_IMAGES = True` and reads
every file: a truncated image is kept with the pixels PIL gives it with that flag (stored as PNG,
so they load exactly), and each is named in the log. A file PIL cannot read even so (DomainBed
would crash on it) is an error naming it, unless the builder config `skip_unreadable` (from
`config.data.skip_unreadable`) skips it: that shifts the domain's in/out splits away from
DomainBed's, so that config builds into its own directory and says so in the log.

Before building, each domain's image files are counted and checked against DomainBed's
(`Spec.counts`; TerraIncognita: the total): a partial download or copy is an error naming the
domain and both counts, unless the builder allows it (prepare's --allow_count_mismatch, for a
deliberate subset). A built dataset records its source in its TFDS metadata (the folder it read,
the URLs that folder was downloaded from, the file counts); asking for it with another manual
dir is an error naming both (`check_source`).

What needs no TensorFlow (the specs, the layout and count checks, the builders' names and
version) is in domainbed_layout.py, re-exported here; the preflight reads it from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, ImageFile

from richft_jax import tf_cpu
from richft_jax.data.domainbed_layout import (  # noqa: F401  (re-exported: domainbed.SPECS, ...)
    ALLOW_COUNT_MISMATCH,
    IMAGE_EXTENSIONS,
    PREPARE,
    SPECS,
    TFDS_VERSION,
    CountMismatchError,
    SourceMismatchError,
    Spec,
    builder_name,
    check_counts,
    check_layout,
    config_name,
    count_images,
    count_mismatches,
    find_root,
    how_to_get,
    image_files,
    locate,
    not_found,
    source_of,
    split_name,
)

tf_cpu.tf()  # TFDS imports TensorFlow when it builds: hide the accelerators from it first.

# Encodings TF decodes to 3 channels as they are; anything else is re-encoded as PNG at build.
_PASS_THROUGH = {"JPEG": ("L", "RGB"), "PNG": ("L", "LA", "P", "RGB", "RGBA")}


def check_source(builder: tfds.core.DatasetBuilder, manual_dir: epath.PathLike) -> None:
    """Raises SourceMismatchError if the prepared `builder` was built from another folder than
    `manual_dir`'s, naming both and how to rebuild."""
    spec = builder.SPEC
    recorded = (builder.info.metadata or {}).get("source")
    here = source_of(manual_dir, spec)
    if not recorded:
        logging.warning(
            "%s in %s records no source (prepared before sources were recorded): used as it "
            "is, not checked against %s.",
            builder.name,
            builder.data_dir,
            here,
        )
        return
    if recorded["manual_dir"] == here:
        return
    urls = recorded.get("urls") or []
    how = f" (downloaded from {', '.join(urls)})" if urls else ""
    raise SourceMismatchError(
        f"{spec.name!r} in {builder.data_dir} was prepared from {recorded['manual_dir']}{how}, "
        f"not from {here}. To build it from {here}, delete {builder.data_dir} or pass another "
        "--data_dir (--config.data.data_dir); to use the prepared one, leave out the manual dir "
        "(--config.data.manual_dir / --manual_dir)."
    )


class UnreadableImageError(ValueError):
    """Image files PIL cannot decode even with LOAD_TRUNCATED_IMAGES (DomainBed would crash)."""


@contextlib.contextmanager
def load_truncated_images() -> Iterator[None]:
    """PIL's LOAD_TRUNCATED_IMAGES on inside the block (DomainBed sets it for the whole process)
    and restored after, so only our decoding of damaged files sees it. (A module global of PIL:
    other threads decoding meanwhile would see it too.)"""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _decoded(data: bytes) -> Image.Image:
    """The image with every pixel decoded (lazy PIL images fail only on load)."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def encoded_image(path: str) -> tuple[bytes, bool]:
    """(bytes that decode to what DomainBed reads, whether the file is truncated).

    The file's own bytes if PIL decodes it whole and TF can decode it to RGB as it is; else the
    pixels PIL gives (with LOAD_TRUNCATED_IMAGES for a truncated file), in RGB, as PNG. Raises
    UnreadableImageError (chained to PIL's error) if PIL cannot decode it even with the flag.
    """
    data = epath.Path(path).read_bytes()
    truncated = False
    try:
        im = _decoded(data)
    except Exception:  # noqa: BLE001  (any failure: try it as DomainBed reads it)
        truncated = True
        try:
            with load_truncated_images():
                im = _decoded(data)
        except Exception as e:  # noqa: BLE001
            raise UnreadableImageError(f"{path}: {type(e).__name__}: {e}") from e
    with im:
        if not truncated and im.mode in _PASS_THROUGH.get(im.format, ()):
            return data, False
        out = io.BytesIO()
        im.convert("RGB").save(out, format="PNG")
        return out.getvalue(), truncated


def _log_damaged(where: epath.Path, truncated: list[str], skipped: list[str]) -> None:
    """One warning per domain naming its truncated (kept) and unreadable (skipped) files."""
    if truncated:
        logging.warning(
            "%s: kept %d truncated image(s), decoded as DomainBed does (PIL with "
            "LOAD_TRUNCATED_IMAGES fills the missing part): %s",
            where,
            len(truncated),
            truncated,
        )
    if skipped:
        logging.warning(
            "%s: skipped %d unreadable image(s) (config.data.skip_unreadable=True): %s. Skipping "
            "changes this domain's in/out splits relative to DomainBed's, which index every "
            "file.",
            where,
            len(skipped),
            skipped,
        )


def domain_examples(
    root: epath.Path, domain: str, classes: tuple[str, ...], skip_unreadable: bool = False
) -> Iterator[dict]:
    """Examples of one domain in ImageFolder order, truncated images kept as DomainBed keeps
    them; unreadable ones raise UnreadableImageError naming them all (after the domain's last
    file) or, with `skip_unreadable`, are skipped."""
    truncated, unreadable = [], []
    for label, name in enumerate(classes):
        for path in image_files(root / domain / name):
            try:
                image, was_truncated = encoded_image(path)
            except UnreadableImageError as e:
                logging.warning("Unreadable image %s", e)
                unreadable.append(path)
                continue
            if was_truncated:
                logging.warning("Truncated image %s: kept, decoded as DomainBed does.", path)
                truncated.append(path)
            if skip_unreadable or not unreadable:  # Else only the error is left to give.
                yield {"image": image, "label": label, "filename": os.path.relpath(path, root)}
    _log_damaged(root / domain, truncated, unreadable if skip_unreadable else [])
    if unreadable and not skip_unreadable:
        raise UnreadableImageError(
            f"{root / domain}: {len(unreadable)} image file(s) that PIL cannot read even with "
            f"LOAD_TRUNCATED_IMAGES (DomainBed would fail on them too): {unreadable}. Replace "
            "or remove them, or set --config.data.skip_unreadable=True to skip them (which "
            "changes the in/out splits relative to DomainBed's)."
        )


@dataclasses.dataclass
class DomainBedConfig(tfds.core.BuilderConfig):
    """Which files a build keeps: a config of its own, so builds that differ never share a dir."""

    skip_unreadable: bool = False


class DomainBedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One TFDS split per domain of a DomainBed folder dataset, read from the manual dir."""

    SPEC: Spec
    # Set on an instance before preparing it (sources.builder_of): build a deliberate subset
    # (counts other than DomainBed's), and the URLs the manual dir's files were downloaded from.
    allow_count_mismatch: bool = False
    source_urls: tuple[str, ...] = ()
    code_path = epath.Path(__file__)  # See digits_domains.DigitsDomains.
    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "DomainBed's folder layout, domains and classes.",
        "2.0.0": "Truncated images kept as DomainBed decodes them; unreadable files an error "
        "(config domainbed) or skipped (config skip_unreadable).",
    }
    BUILDER_CONFIGS = [
        DomainBedConfig(
            name=config_name(False),
            description="Every file, as DomainBed: truncated images kept; unreadable an error.",
        ),
        DomainBedConfig(
            name=config_name(True),
            skip_unreadable=True,
            description="Unreadable files skipped: in/out splits differ from DomainBed's.",
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        """Variable-size encoded images, the class label and the file's path in the dataset."""
        spec = self.SPEC
        label = (
            tfds.features.ClassLabel(names=list(spec.classes))
            if spec.classes
            else tfds.features.ClassLabel(num_classes=spec.num_classes)
        )
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": label,
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # ImageFolder order: DomainBed's split indices refer to it.
            metadata=tfds.core.MetadataDict(),  # The source it was built from (see below).
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        """Checks the whole layout first, then one split per domain in DomainBed's order."""
        spec = self.SPEC
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError as e:  # TFDS's "manual dir missing or empty".
            raise FileNotFoundError(
                f"DomainBed dataset {spec.name!r}: {str(e).split('. ')[0]} (the TFDS manual "
                "dir). " + how_to_get(spec)
            ) from None
        root = find_root(manual_dir, spec)
        classes = check_layout(root, spec)
        found = count_images(root, spec, classes)  # Before the (long) encoding: fails fast.
        check_counts(spec, found, root, self.allow_count_mismatch)
        self.info.metadata["source"] = {
            "manual_dir": source_of(root, spec),
            "urls": list(self.source_urls),
        }
        self.info.metadata["image_files"] = found
        self.info.metadata["counts_match"] = not count_mismatches(spec, found)
        if not spec.classes:
            self.info.features["label"].names = list(classes)
        return {split_name(d): self._generate_examples(root, d, classes) for d in spec.domains}

    def _generate_examples(self, root: epath.Path, domain: str, classes: tuple[str, ...]):
        """Yields (index, example) pairs of one domain."""
        skip = self.builder_config.skip_unreadable
        yield from enumerate(domain_examples(root, domain, classes, skip))


class DomainBedPACS(DomainBedBuilder):
    """PACS (art painting, cartoon, photo, sketch; 7 classes) in DomainBed's layout."""

    SPEC = SPECS["pacs"]
    name = builder_name(SPEC)
    num_classes = SPEC.num_classes
    MANUAL_DOWNLOAD_INSTRUCTIONS = how_to_get(SPEC)


class DomainBedVLCS(DomainBedBuilder):
    """VLCS (Caltech101, LabelMe, SUN09, VOC2007; 5 classes) in DomainBed's layout."""

    SPEC = SPECS["vlcs"]
    name = builder_name(SPEC)
    num_classes = SPEC.num_classes
    MANUAL_DOWNLOAD_INSTRUCTIONS = how_to_get(SPEC)


class DomainBedOfficeHome(DomainBedBuilder):
    """OfficeHome (Art, Clipart, Product, Real World; 65 classes) in DomainBed's layout."""

    SPEC = SPECS["office_home"]
    name = builder_name(SPEC)
    num_classes = SPEC.num_classes
    MANUAL_DOWNLOAD_INSTRUCTIONS = how_to_get(SPEC)


class DomainBedTerraIncognita(DomainBedBuilder):
    """DomainBed's TerraIncognita subset (locations 100, 38, 43, 46; 10 classes)."""

    SPEC = SPECS["terra_incognita"]
    name = builder_name(SPEC)
    num_classes = SPEC.num_classes
    MANUAL_DOWNLOAD_INSTRUCTIONS = how_to_get(SPEC)


class DomainBedDomainNet(DomainBedBuilder):
    """DomainNet (clipart, infograph, painting, quickdraw, real, sketch; 345 classes), with
    DomainBed's splits (not the official train/test: see sources' "domainnet_official")."""

    SPEC = SPECS["domainnet"]
    name = builder_name(SPEC)
    num_classes = SPEC.num_classes
    MANUAL_DOWNLOAD_INSTRUCTIONS = how_to_get(SPEC)


BUILDERS = {
    b.SPEC.name: b
    for b in (
        DomainBedPACS,
        DomainBedVLCS,
        DomainBedOfficeHome,
        DomainBedTerraIncognita,
        DomainBedDomainNet,
    )
}
