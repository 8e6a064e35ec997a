r"""Downloads a DomainBed photo dataset as DomainBed's download script does, and prepares it.

  python -m richft_jax.data.prepare --dataset=pacs [--data_dir=D]
  python -m richft_jax.data.prepare --dataset=pacs --manual_dir=DIR  # A local copy instead.

Datasets: pacs, vlcs, office_home, terra_incognita, domainnet. Three steps, each done once (a
rerun skips what is finished, so an interrupted run is resumed by running it again):

1. Download: the archives DomainBed's script uses (`ARCHIVES`) into D/downloads/domainbed/
   ($RICHFT_CACHE/downloads/domainbed/ when D is a bucket, gs://...: archives are extracted on
   a local disk, and only the TFDS dataset is written to the bucket),
   each written to a temp file and renamed when complete (a broken download never passes for
   the file). Google Drive files (PACS, VLCS, OfficeHome) through gdown, an optional extra
   (`pip install 'richft_jax[download]'`); the others (TerraIncognita, DomainNet) over http(s).
2. Extract into DomainBed's layout, D/downloads/manual/<folder>/ (TFDS's manual dir, where runs
   look without --config.data.manual_dir): into a temp folder beside it, renamed when done.
   TerraIncognita: DomainBed's selection of locations and categories from the camera-trap
   annotations; DomainNet: DomainBed's list of duplicate images removed. The archives are
   deleted then (as DomainBed's script does; --keep_archives keeps them).
3. Build the TFDS dataset with domainbed.py's builder: the image counts are checked against
   DomainBed's (before building, and of the built dataset; --allow_count_mismatch builds a
   deliberate subset), and the dataset records the folder and URLs it was built from.

RICHFT_DATA_MIRROR=http://HOST:PORT fetches every archive from a mirror instead: an http(s) URL
at its own path there, a Google Drive file at /gdrive/<file id> (no gdown needed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence

import tensorflow_datasets as tfds
from absl import app, flags, logging

from richft_jax import cli, config_lib, paths
from richft_jax.data import domainbed, sources
from richft_jax.models import hub

MIRROR_ENV = "RICHFT_DATA_MIRROR"
EXTRA = "pip install 'richft_jax[download]'"  # gdown, for the Google Drive archives.
RECORD = ".richft_prepare.json"  # In an extracted folder: what it was extracted from.
_GDRIVE = "https://drive.google.com/uc?id="
_LILA = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps/"
_DOMAINNET = "http://csr.bu.edu/ftp/visda/2019/multi-source/"
# DomainBed's list of DomainNet's duplicate images, at the commit that last changed it.
_DUPLICATES = (
    "https://raw.githubusercontent.com/facebookresearch/DomainBed/"
    "8ff97a7b159eda90ad2171eac5f6c8988d31a285/domainbed/misc/domain_net_duplicates.txt"
)


class DownloadError(hub.DownloadError):
    """An archive could not be downloaded (offline, HTTP error, broken download, no gdown)."""


@dataclasses.dataclass(frozen=True)
class Archive:
    """One file to download: its URL (http(s), or a Google Drive file `_GDRIVE + id`), its name
    in the downloads folder, where it is extracted (a folder in the extraction; None: not an
    archive, read as it is), and its sha256 where known."""

    url: str
    file: str
    into: str | None = ""
    sha256: str | None = None


def _domainnet() -> tuple[Archive, ...]:
    """Its six zips (clipart and painting from groundtruth/, as DomainBed's script takes them)
    and DomainBed's list of duplicates, pinned by its sha256."""
    paths = ("groundtruth/clipart", "infograph", "groundtruth/painting", "quickdraw", "real")
    paths += ("sketch",)
    zips = tuple(
        Archive(f"{_DOMAINNET}{p}.zip", f"{p.split('/')[-1]}.zip", "domain_net") for p in paths
    )
    sha = "a52b4ab70203f4f3df381077694dba3e33ff44c26407e1c5faca76919c702770"
    return zips + (Archive(_DUPLICATES, "domain_net_duplicates.txt", None, sha),)


# The archives of DomainBed's domainbed/scripts/download.py, per dataset (data: tests and
# mirrors may point them elsewhere).
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "pacs": (Archive(_GDRIVE + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip"),),
    "vlcs": (Archive(_GDRIVE + "1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS.tar.gz"),),
    "office_home": (Archive(_GDRIVE + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home.zip"),),
    "terra_incognita": (
        Archive(_LILA + "eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm.tar.gz"),
        Archive(_LILA + "eccv_18_annotations.tar.gz", "eccv_18_annotations.tar.gz"),
    ),
    "domainnet": _domainnet(),
}

# TerraIncognita as DomainBed selects it: these camera locations, these categories, from the
# annotations of every split of the ECCV'18 camera-trap release.
TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = domainbed.SPECS["terra_incognita"].classes
TERRA_ANNOTATIONS = tuple(
    f"{s}_annotations.json" for s in ("cis_test", "cis_val", "train", "trans_test", "trans_val")
)


# ----------------------------------------------------------------------------- downloading
def source_url(url: str) -> str:
    """Where `url` is fetched from: through $RICHFT_DATA_MIRROR when set (an http(s) URL at its
    path there, a Google Drive file at /gdrive/<id>), else `url` itself."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and url.startswith(_GDRIVE):
        return f"{mirror.rstrip('/')}/gdrive/{url[len(_GDRIVE) :]}"
    return hub.mirrored(url, mirror or "", ("https://", "http://"))


def _not_an_archive(path: str, name: str) -> str | None:
    """Why the file at `path` is not a complete `name` archive (its index / magic), or None."""
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                z.infolist()
        elif name.endswith((".tar.gz", ".tgz")):
            with open(path, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    return "not gzip data (an error page?)"
    except (zipfile.BadZipFile, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _gdown(file_id: str, path: pathlib.Path) -> None:
    """Downloads a Google Drive file with gdown to a temp file, renamed when complete."""
    try:
        import gdown  # noqa: PLC0415  (an optional extra)
    except ImportError as e:
        raise DownloadError(
            f"{path.name} is a Google Drive file, downloaded with gdown, which is not installed: "
            f"{EXTRA} (or `pip install gdown`). Or put the file by hand at {path}, or set "
            f"{MIRROR_ENV}=http://HOST:PORT to a mirror serving it at /gdrive/{file_id}."
        ) from e
    tmp = path.with_name(f".{path.name}.{os.getpid()}.gdown.part")
    by_hand = f"try again later (Drive limits downloads), or put the file by hand at {path}"
    try:
        try:
            gdown.download(id=file_id, output=str(tmp), quiet=False)
        except Exception as e:  # noqa: BLE001  (gdown's own errors, the network's)
            raise DownloadError(
                f"gdown could not download Google Drive file {file_id} ({type(e).__name__}: "
                f"{e}); {by_hand}."
            ) from e
        if not tmp.is_file():  # Older gdown returns None instead of raising.
            raise DownloadError(f"gdown did not download Google Drive file {file_id}; {by_hand}.")
        if broken := _not_an_archive(str(tmp), path.name):
            raise DownloadError(f"Google Drive file {file_id}: {broken}; nothing was kept.")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download(archive: Archive, folder: pathlib.Path) -> pathlib.Path:
    """The archive's file in `folder`, downloaded unless it is there already (complete: only
    complete downloads are renamed to it)."""
    path = folder / archive.file
    if path.is_file():
        logging.info("%s: downloaded already.", path)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{archive.file}.*part"):  # Left by a killed process.
        stale.unlink(missing_ok=True)
    url = source_url(archive.url)
    if url.startswith(_GDRIVE):
        _gdown(url[len(_GDRIVE) :], path)
        return path
    logging.info("Downloading %s to %s.", url, path)

    def check(tmp: str) -> str | None:
        return _not_an_archive(tmp, archive.file)

    try:
        hub.download_file(url, path, archive.file, archive.sha256, check)
    except hub.Unreachable as e:
        raise DownloadError(
            f"Could not download {url} ({e}). Put the file by hand at {path}, or set "
            f"{MIRROR_ENV}=http://HOST:PORT to a mirror that serves the same paths."
        ) from e
    return path


# ----------------------------------------------------------------------------- extracting
def extract(path: pathlib.Path, into: pathlib.Path) -> None:
    """Extracts a .zip / .tar / .tar.gz into `into` (members outside it are refused)."""
    into.mkdir(parents=True, exist_ok=True)
    logging.info("Extracting %s into %s.", path, into)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            z.extractall(into)  # zipfile drops absolute paths and "..".
        return
    with tarfile.open(path, "r:*") as t:
        t.extractall(into, filter="data")


def _moved(name: str) -> Callable[[pathlib.Path, pathlib.Path], pathlib.Path]:
    """Arranging by taking the archive's top folder `name` (DomainBed's os.rename)."""

    def arrange(tmp: pathlib.Path, downloads: pathlib.Path) -> pathlib.Path:
        if not (tmp / name).is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise FileNotFoundError(f"The archive has no folder {name}/ (it has {found}).")
        return tmp / name

    return arrange


def remove_duplicates(root: pathlib.Path, listing: pathlib.Path) -> int:
    """Deletes the files `listing` names (paths relative to `root`) that exist; how many."""
    removed = 0
    for line in listing.read_text().splitlines():
        if line.strip() and (root / line.strip()).is_file():
            (root / line.strip()).unlink()
            removed += 1
    return removed


def _arrange_domainnet(tmp: pathlib.Path, downloads: pathlib.Path) -> pathlib.Path:
    removed = remove_duplicates(tmp / "domain_net", downloads / "domain_net_duplicates.txt")
    logging.info("DomainNet: removed %d duplicate images (DomainBed's list).", removed)
    return tmp / "domain_net"


def terra_selection(annotation_files: Sequence[pathlib.Path]) -> list[tuple[str, str]]:
    """(path in terra_incognita/, image file) of each image DomainBed keeps: images at
    TERRA_LOCATIONS with an annotation of a TERRA_CATEGORIES category, one path per (location,
    category, file) (an image annotated with two kept categories is in both folders)."""
    images, annotations, names = {}, [], {}
    for path in annotation_files:
        data = json.loads(path.read_text())
        images.update({im["id"]: im for im in data["images"]})
        annotations += data["annotations"]
        names.update({c["id"]: c["name"] for c in data["categories"]})
    kept = set()
    for a in annotations:
        image, category = images.get(a["image_id"]), names.get(a["category_id"])
        if image is None or category not in TERRA_CATEGORIES:
            continue
        location = str(image["location"])
        if location in TERRA_LOCATIONS:
            file = image["file_name"]
            kept.add((f"location_{location}/{category}/{file}", file))
    return sorted(kept)


def _arrange_terra(tmp: pathlib.Path, downloads: pathlib.Path) -> pathlib.Path:
    """terra_incognita/location_L/category/<file>, linked (or copied) from the images."""
    notes, images = tmp / "eccv_18_annotation_files", tmp / "eccv_18_all_images_sm"
    out = tmp / "terra_incognita"
    selection = terra_selection([notes / f for f in TERRA_ANNOTATIONS])
    missing = [f for _, f in selection if not (images / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"TerraIncognita: {len(missing)} annotated image(s) not in the images archive, "
            f"e.g. {missing[:5]} (DomainBed's script would fail on them too)."
        )
    for rel, file in selection:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(images / file, out / rel)
        except OSError:
            shutil.copyfile(images / file, out / rel)
    logging.info("TerraIncognita: %d images selected.", len(selection))
    return out


ARRANGE: dict[str, Callable[[pathlib.Path, pathlib.Path], pathlib.Path]] = {
    "pacs": _moved("kfold"),
    "vlcs": _moved("VLCS"),
    "office_home": _moved("OfficeHomeDataset_10072016"),
    "terra_incognita": _arrange_terra,
    "domainnet": _arrange_domainnet,
}


def extracted(
    name: str, manual: pathlib.Path, downloads: pathlib.Path, keep_archives: bool = False
) -> pathlib.Path:
    """The dataset's folder in DomainBed's layout, `manual/<folder>`: downloaded and extracted
    unless it is there already (renamed into place only when complete)."""
    spec, archives = domainbed.SPECS[name], ARCHIVES[name]
    final = manual / spec.folder
    if final.is_dir():
        logging.info("%s: extracted already.", final)
        return final
    files = [download(a, downloads) for a in archives]
    record = {"dataset": name, "archives": []}
    for a, f in zip(archives, files, strict=True):
        record["archives"].append({"url": a.url, "file": a.file, "sha256": _sha256(f)})
    manual.mkdir(parents=True, exist_ok=True)
    for stale in manual.glob(f".{spec.folder}.extracting-*"):  # An interrupted extraction.
        shutil.rmtree(stale, ignore_errors=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{spec.folder}.extracting-", dir=manual))
    try:
        for a, f in zip(archives, files, strict=True):
            if a.into is not None:
                extract(f, tmp / a.into)
        root = ARRANGE[name](tmp, downloads)
        (root / RECORD).write_text(json.dumps(record, indent=1))
        os.rename(root, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archives:
        for f in files:
            f.unlink(missing_ok=True)
    return final


# ----------------------------------------------------------------------------- preparing
def counts_of(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
    """{domain: image files} of a prepared dataset (its examples where it does not record its
    files: prepared before they were recorded)."""
    spec = builder.SPEC
    files = (builder.info.metadata or {}).get("image_files")
    if files:
        return {d: int(files[d]) for d in spec.domains}
    splits = builder.info.splits
    return {d: splits[domainbed.split_name(d)].num_examples for d in spec.domains}


def prepare(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    allow_count_mismatch: bool = False,
    keep_archives: bool = False,
    skip_unreadable: bool = False,
) -> tfds.core.DatasetBuilder:
    """The prepared TFDS dataset `name`, from `manual_dir` (a local copy in DomainBed's layout)
    or else downloaded and extracted first; image counts checked against DomainBed's."""
    if name not in domainbed.BUILDERS:
        raise ValueError(f"--dataset={name!r}: not one of {sorted(domainbed.BUILDERS)}.")
    spec = domainbed.SPECS[name]
    builder = sources.make_builder(name, data_dir, skip_unreadable)
    if manual_dir is None:
        downloads = downloads_dir(builder.data_dir_root)
        if not builder.is_prepared():
            extracted(name, downloads / "manual", downloads / "domainbed", keep_archives)
        manual_dir = str(downloads / "manual")
    root = domainbed.locate(manual_dir, spec)
    urls = _urls_of(pathlib.Path(root)) if root is not None else []
    builder = sources.builder_of(
        name, data_dir, manual_dir, skip_unreadable, allow_count_mismatch, urls
    )
    domainbed.check_counts(spec, counts_of(builder), builder.data_dir, allow_count_mismatch)
    return builder


def downloads_dir(data_dir_root: str) -> pathlib.Path:
    """Where archives are downloaded and extracted: beside the TFDS data dir on a local disk
    (TFDS's own <data_dir>/downloads), on a local disk when the data dir is a bucket
    ($RICHFT_CACHE/downloads: extraction renames folders, which object stores cannot do), so a
    gs:// data dir never becomes a local folder named "gs:"."""
    if paths.is_remote(data_dir_root):
        return pathlib.Path(config_lib.cache_path("downloads")).expanduser()
    return pathlib.Path(data_dir_root).expanduser() / "downloads"


def _urls_of(folder: pathlib.Path) -> list[str]:
    """The URLs an extracted folder came from (none: a copy put there by hand)."""
    try:
        return [a["url"] for a in json.loads((folder / RECORD).read_text())["archives"]]
    except (OSError, ValueError, KeyError):
        return []


def summary(builder: tfds.core.DatasetBuilder) -> str:
    """The prepared dataset: where, from what, and its counts beside DomainBed's."""
    spec, meta = builder.SPEC, builder.info.metadata or {}
    counts = counts_of(builder)
    expected = dict(zip(spec.domains, spec.counts or (), strict=False))
    lines = [f"Prepared {spec.name!r} in {builder.data_dir}"]
    source = meta.get("source") or {}
    lines.append(f"  from {source.get('manual_dir', '(not recorded)')}")
    lines += [f"  downloaded from {u}" for u in source.get("urls", [])]
    for d in spec.domains:
        theirs = f"{expected[d]:,}" if d in expected else "not published"
        lines.append(f"  {d:>14}: {counts[d]:>8,} images (DomainBed's: {theirs})")
    total = spec.total and f"{spec.total:,}"
    lines.append(f"  {'all':>14}: {sum(counts.values()):>8,} images (DomainBed's: {total})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """This command line's flags (defined when it starts, as every entry point's)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("dataset", None, sorted(domainbed.BUILDERS), "The dataset.", **fv)
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).", **fv)
    flags.DEFINE_string(
        "manual_dir", None, "A local copy in DomainBed's layout (DIR/<folder>/): no download.", **fv
    )
    flags.DEFINE_bool(
        "allow_count_mismatch", False, "Build it even if its counts are not DomainBed's.", **fv
    )
    flags.DEFINE_bool("keep_archives", False, "Keep the archives after extracting.", **fv)
    flags.DEFINE_bool(
        "skip_unreadable", False, "Prepare config.data.skip_unreadable's build.", **fv
    )
    flags.mark_flag_as_required("dataset", **fv)


def main(argv: list[str]) -> None:
    """Prepares --dataset and prints where, from what, and its image counts."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        builder = prepare(
            f.dataset,
            f.data_dir,
            f.manual_dir,
            f.allow_count_mismatch,
            f.keep_archives,
            f.skip_unreadable,
        )
    except (hub.DownloadError, ValueError, FileNotFoundError) as e:  # What to do is in `e`.
        sys.exit(f"prepare --dataset={f.dataset}: {type(e).__name__}: {e}")
    print(summary(builder))


def run() -> None:
    """`python -m richft_jax.data.prepare`."""
    cli.run(main, __name__, __doc__, define_flags)


if __name__ == "__main__":
    run()
