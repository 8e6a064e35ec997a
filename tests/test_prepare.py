"""`python -m richft_jax.data.prepare` against a local HTTP server (RICHFT_DATA_MIRROR) serving
tiny archives in the real layouts: downloads that break off leave nothing and are resumed,
finished steps are not redone (counted requests), TerraIncognita's selection, DomainNet's
duplicates, the image-count check and its override, and the recorded source."""

import dataclasses
import hashlib
import io
import json
import pathlib
import subprocess
import sys
import tarfile
import types
import urllib.parse
import zipfile

import numpy as np
import pytest
from local_http import LocalServer
from PIL import Image

from richft_jax.data import domainbed, prepare, sources
from richft_jax.models import hub

PACS = domainbed.SPECS["pacs"]
TERRA = domainbed.SPECS["terra_incognita"]


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def targz_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pacs_zip() -> bytes:
    """DomainBed's PACS.zip: kfold/<domain>/<class>/<image>; one image a class, two in one."""
    files = {}
    for i, d in enumerate(PACS.domains):
        for j, c in enumerate(PACS.classes):
            files[f"kfold/{d}/{c}/{i}_{j}.jpg"] = jpeg(10 * i + j)
    files["kfold/photo/dog/extra.jpg"] = jpeg(99)
    return zip_of(files)


def terra_archives() -> tuple[bytes, bytes, dict[str, int]]:
    """(images .tar.gz, annotations .tar.gz, {location folder: images DomainBed keeps}): one
    image per kept location and category, spread over the five annotation files; plus an image
    at another location, one of another category, one with two kept categories (in both
    folders), one annotated twice alike, and locations as numbers and as strings."""
    images, notes = (
        {},
        {f: {"images": [], "annotations": [], "categories": []} for f in prepare.TERRA_ANNOTATIONS},
    )
    categories = [*TERRA.classes, "deer"]
    for f in notes.values():  # Every file lists the categories, as the real ones do.
        f["categories"] = [{"id": 100 + k, "name": c} for k, c in enumerate(categories)]
    files = list(notes.values())
    n = 0

    def add(location, cats: list[str]) -> None:
        nonlocal n
        name = f"img{n:04d}.jpg"
        images[f"eccv_18_all_images_sm/{name}"] = jpeg(1000 + n)
        part = files[n % len(files)]
        part["images"].append({"id": f"id{n}", "file_name": name, "location": location})
        for k, c in enumerate(cats):
            cid = 100 + categories.index(c)
            part["annotations"].append(
                {"id": f"a{n}_{k}", "image_id": f"id{n}", "category_id": cid}
            )
        n += 1

    for location in (38, "46", 100, "43"):
        for c in TERRA.classes:
            add(location, [c])
    add(99, ["cat"])  # Another location: left out.
    add(38, ["deer"])  # Another category: left out.
    add("43", ["cat", "dog"])  # In location_43/cat/ and location_43/dog/.
    add(100, ["bird", "bird"])  # Once.
    expected = {"location_38": 10, "location_46": 10, "location_100": 11, "location_43": 12}
    annotations = {
        f"eccv_18_annotation_files/{k}": json.dumps(v).encode() for k, v in notes.items()
    }
    return targz_of(images), targz_of(annotations), expected


DOMAINNET_DUPLICATES = ["clipart/c0/clipart_1.jpg", "sketch/c1/sketch_0.jpg", "real/none.jpg"]


def domainnet_zips() -> dict[str, bytes]:
    """{zip file: bytes}: each domain's zip holds <domain>/<class>/<image>, 2 classes x 2."""
    out = {}
    for i, d in enumerate(domainbed.SPECS["domainnet"].domains):
        files = {f"{d}/c{c}/{d}_{k}.jpg": jpeg(10 * i + 2 * c + k) for c in (0, 1) for k in (0, 1)}
        out[f"{d}.zip"] = zip_of(files)
    return out


def path_of(name: str, file: str) -> str:
    """The URL path an archive of `name` is served at through the mirror."""
    archive = next(a for a in prepare.ARCHIVES[name] if a.file == file)
    return urllib.parse.urlsplit(prepare.source_url(archive.url)).path


@pytest.fixture(scope="module")
def server():
    s = LocalServer()
    yield {"served": s, "url": s.url}
    s.close()


@pytest.fixture
def env(server, monkeypatch):
    """The mirror at the server (every dataset's archives served), its log and drops cleared."""
    monkeypatch.setenv(prepare.MIRROR_ENV, server["url"])
    served = server["served"]
    served.clear()
    served.files[path_of("pacs", "PACS.zip")] = pacs_zip()
    images, notes, _ = terra_archives()
    served.files[path_of("terra_incognita", "eccv_18_all_images_sm.tar.gz")] = images
    served.files[path_of("terra_incognita", "eccv_18_annotations.tar.gz")] = notes
    for file, data in domainnet_zips().items():
        served.files[path_of("domainnet", file)] = data
    listing = ("\n".join(DOMAINNET_DUPLICATES) + "\n").encode()
    served.files[path_of("domainnet", "domain_net_duplicates.txt")] = listing
    return served


def tree(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_mirror_urls():
    a = "https://host.example/some/path/file.tar.gz?x=1"
    assert prepare.source_url(a) == a
    with pytest.MonkeyPatch.context() as m:
        m.setenv(prepare.MIRROR_ENV, "http://127.0.0.1:9/m/")
        m.setenv(hub.MIRROR_ENV, "http://weights-mirror")  # The weights' mirror is not used.
        assert prepare.source_url(a) == "http://127.0.0.1:9/m/some/path/file.tar.gz?x=1"
        assert prepare.source_url("http://csr.bu.edu/ftp/x.zip") == "http://127.0.0.1:9/m/ftp/x.zip"
        gdrive = prepare.ARCHIVES["pacs"][0].url
        assert prepare.source_url(gdrive) == "http://127.0.0.1:9/m/gdrive/" + gdrive.split("=")[1]


def test_pacs_download_extract_count_check_override_and_resume(env, tmp_path):
    data = tmp_path / "tfds"
    # The layout is DomainBed's, but 7-8 images a domain: the count check names every domain.
    with pytest.raises(domainbed.CountMismatchError) as err:
        prepare.prepare("pacs", str(data))
    message = str(err.value)
    for d, n in zip(PACS.domains, PACS.counts, strict=True):
        found = 8 if d == "photo" else 7
        assert f"domain {d!r}: {found} images, DomainBed's {n:,}" in message
    assert "--allow_count_mismatch" in message
    assert env.requests == [path_of("pacs", "PACS.zip")]
    manual = data / "downloads" / "manual"
    assert tree(manual)[:2] == ["PACS/.richft_prepare.json", "PACS/art_painting/dog/0_0.jpg"]
    assert len(tree(manual / "PACS" / "photo")) == 8
    assert tree(data / "downloads" / "domainbed") == []  # The archive, deleted once extracted.

    # The override builds it, from what was extracted: nothing downloaded again.
    env.requests.clear()
    builder = prepare.prepare("pacs", str(data), allow_count_mismatch=True)
    assert env.requests == []
    assert builder.info.splits["photo"].num_examples == 8
    source = builder.info.metadata["source"]
    assert source["manual_dir"] == str((manual / "PACS").resolve())
    assert source["urls"] == [prepare.ARCHIVES["pacs"][0].url]
    assert builder.info.metadata["image_files"]["photo"] == 8
    assert not builder.info.metadata["counts_match"]
    text = prepare.summary(builder)
    assert "photo:        8 images (DomainBed's: 1,670)" in text and "downloaded from" in text

    # Prepared: a rerun asks the server for nothing; without the override the built dataset's
    # counts are refused again (a subset never passes for DomainBed's PACS).
    assert prepare.prepare("pacs", str(data), allow_count_mismatch=True).is_prepared()
    with pytest.raises(domainbed.CountMismatchError, match="domain 'sketch': 7 images"):
        prepare.prepare("pacs", str(data))
    assert env.requests == []
    # Runs read the prepared dataset (the recorded source is where runs' manual dir points).
    arrays = sources.load_arrays("pacs", str(data), image_size=8, manual_dir=str(manual))
    assert arrays["photo"][0].shape == (8, 8, 8, 3)


def test_another_source_is_an_error_naming_both(env, tmp_path):
    data = tmp_path / "tfds"
    prepare.prepare("pacs", str(data), allow_count_mismatch=True)
    prepared_from = (data / "downloads" / "manual" / "PACS").resolve()
    other = tmp_path / "copy"
    with zipfile.ZipFile(io.BytesIO(pacs_zip())) as z:
        z.extractall(other)
    (other / "kfold").rename(other / "PACS")
    for use in (
        lambda: sources.builder_of("pacs", str(data), str(other)),
        lambda: prepare.prepare("pacs", str(data), str(other), allow_count_mismatch=True),
    ):
        with pytest.raises(domainbed.SourceMismatchError) as err:
            use()
        message = str(err.value)
        assert str(prepared_from) in message and str((other / "PACS").resolve()) in message
        assert "delete" in message and "--data_dir" in message
    # The same folder named either way, or none, is the prepared dataset.
    assert sources.builder_of("pacs", str(data), str(data / "downloads" / "manual"))
    assert sources.builder_of("pacs", str(data), str(prepared_from))
    assert sources.builder_of("pacs", str(data))
    # The copy, prepared into another data dir, records it (and no URLs).
    copied = prepare.prepare("pacs", str(tmp_path / "tfds2"), str(other), True)
    assert copied.info.metadata["source"] == {
        "manual_dir": str((other / "PACS").resolve()),
        "urls": [],
    }


def test_terra_incognita_selection_and_total_check(env, tmp_path):
    _, _, expected = terra_archives()
    data = tmp_path / "tfds"
    with pytest.raises(domainbed.CountMismatchError) as err:
        prepare.prepare("terra_incognita", str(data))
    assert "all domains: 43 images, DomainBed's 24,788" in str(err.value)
    root = data / "downloads" / "manual" / "terra_incognita"
    files = tree(root)
    for location, n in expected.items():
        assert len([f for f in files if f.startswith(location + "/")]) == n
        for c in TERRA.classes:
            assert (root / location / c).is_dir()
    assert "location_43/cat/img0042.jpg" in files and "location_43/dog/img0042.jpg" in files
    assert not any(f.endswith(("img0040.jpg", "img0041.jpg")) for f in files)  # 99; deer.
    assert sorted(p.name for p in root.parent.iterdir()) == ["terra_incognita"]  # No temp left.
    env.requests.clear()
    builder = prepare.prepare("terra_incognita", str(data), allow_count_mismatch=True)
    assert env.requests == []
    assert {d: builder.info.splits[d].num_examples for d in TERRA.domains} == expected


def test_dropped_connection_leaves_nothing_and_a_rerun_completes(env, tmp_path, monkeypatch):
    listing = ("\n".join(DOMAINNET_DUPLICATES) + "\n").encode()
    archives = list(prepare.ARCHIVES["domainnet"])
    pinned = archives[-1]
    monkeypatch.setitem(
        prepare.ARCHIVES,
        "domainnet",
        (*archives[:-1], dataclasses.replace(pinned, sha256=hashlib.sha256(listing).hexdigest())),
    )
    manual, downloads = tmp_path / "manual", tmp_path / "downloads"
    sketch = path_of("domainnet", "sketch.zip")
    env.drop.add(sketch)
    with pytest.raises(
        hub.DownloadError, match=r"sketch.zip broke off after [\d,]+ of [\d,]+ bytes"
    ):
        prepare.extracted("domainnet", manual, downloads)
    done = ["clipart.zip", "infograph.zip", "painting.zip", "quickdraw.zip", "real.zip"]
    assert tree(downloads) == done  # No partial file, no temp file.
    assert not manual.exists() or tree(manual) == []

    env.drop.clear()
    env.requests.clear()
    root = prepare.extracted("domainnet", manual, downloads, keep_archives=True)
    assert env.requests == [sketch, path_of("domainnet", "domain_net_duplicates.txt")]
    files = tree(root)
    assert len(files) == 6 * 4 - 2 + 1  # Two listed duplicates removed (one is absent); record.
    assert "clipart/c0/clipart_1.jpg" not in files and "sketch/c1/sketch_0.jpg" not in files
    assert "clipart/c0/clipart_0.jpg" in files
    assert tree(downloads) == sorted([*done, "sketch.zip", "domain_net_duplicates.txt"])
    env.requests.clear()
    assert prepare.extracted("domainnet", manual, downloads) == root
    assert env.requests == []


def test_a_pinned_sha256_refuses_another_file(env, tmp_path):
    # The real listing's sha256 is pinned; the server's listing is not that file.
    downloads = tmp_path / "downloads"
    with pytest.raises(hub.ChecksumError, match="domain_net_duplicates.txt"):
        prepare.download(prepare.ARCHIVES["domainnet"][-1], downloads)
    assert tree(downloads) == []


def test_google_drive_needs_gdown_named_as_an_extra(tmp_path, monkeypatch):
    monkeypatch.delenv(prepare.MIRROR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "gdown", None)  # Not installed.
    with pytest.raises(prepare.DownloadError) as err:
        prepare.download(prepare.ARCHIVES["vlcs"][0], tmp_path)
    message = str(err.value)
    assert "richft_jax[download]" in message and str(tmp_path / "VLCS.tar.gz") in message
    assert prepare.MIRROR_ENV in message
    assert tree(tmp_path) == []


def test_google_drive_through_gdown_renamed_only_when_complete(tmp_path, monkeypatch):
    # gdown itself (Google Drive) cannot run here: a stand-in writes what it would.
    monkeypatch.delenv(prepare.MIRROR_ENV, raising=False)
    calls = []

    def download(id, output, quiet):  # noqa: A002 (gdown's keyword)
        calls.append((id, pathlib.Path(output).parent))
        pathlib.Path(output).write_bytes(body)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    archive = prepare.ARCHIVES["pacs"][0]
    body = b"<html>Too many users have viewed or downloaded this file recently</html>"
    with pytest.raises(prepare.DownloadError, match="BadZipFile.*nothing was kept"):
        prepare.download(archive, tmp_path)
    assert tree(tmp_path) == []  # The page did not pass for PACS.zip.
    body = pacs_zip()
    assert prepare.download(archive, tmp_path) == tmp_path / "PACS.zip"
    assert tree(tmp_path) == ["PACS.zip"] and (tmp_path / "PACS.zip").read_bytes() == body
    assert calls == [(archive.url.split("=")[1], tmp_path)] * 2
    assert prepare.download(archive, tmp_path) == tmp_path / "PACS.zip"  # Not again.
    assert len(calls) == 2

    def refused(id, output, quiet):  # noqa: A002
        pathlib.Path(output).write_bytes(b"half")
        raise RuntimeError("Too many users have viewed or downloaded this file recently.")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=refused))
    with pytest.raises(prepare.DownloadError, match=r"RuntimeError: Too many.*put the file by"):
        prepare.download(prepare.ARCHIVES["office_home"][0], tmp_path)
    assert tree(tmp_path) == ["PACS.zip"]


def test_command_line(env, tmp_path):
    data = tmp_path / "tfds"
    command = [sys.executable, "-m", "richft_jax.data.prepare", "--dataset=pacs"]
    command += [f"--data_dir={data}", "--allow_count_mismatch"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Prepared 'pacs' in {data}" in done.stdout
    assert "sketch:        7 images (DomainBed's: 3,929)" in done.stdout
    assert env.requests == [path_of("pacs", "PACS.zip")]
    command = [*command[:-1], f"--manual_dir={tmp_path / 'nothing'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1 and "SourceMismatchError" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "name,archive,top",
    [("vlcs", "VLCS.tar.gz", "VLCS"), ("office_home", "office_home.zip", "Office")],
)
def test_vlcs_and_office_home_layouts(env, tmp_path, monkeypatch, name, archive, top):
    # Plain URLs on the server (the data-driven table), as a mirror serves Drive files.
    spec = domainbed.SPECS[name]
    inner = {"VLCS": "VLCS", "Office": "OfficeHomeDataset_10072016"}[top]
    files = {f"{inner}/{d}/cls/x.jpg": jpeg(k) for k, d in enumerate(spec.domains)}
    files[f"{inner}/ImageInfo.csv"] = b"not an image"
    body = targz_of(files) if archive.endswith(".tar.gz") else zip_of(files)
    url = f"https://files.example/{archive}"
    monkeypatch.setitem(prepare.ARCHIVES, name, (prepare.Archive(url, archive),))
    env.files[f"/{archive}"] = body
    root = prepare.extracted(name, tmp_path / "manual", tmp_path / "downloads")
    assert root == tmp_path / "manual" / spec.folder
    assert [f for f in tree(root) if f.endswith(".jpg")] == [f"{d}/cls/x.jpg" for d in spec.domains]
    assert env.requests == [f"/{archive}"]
    # An archive without the expected top folder is named.
    other = prepare.Archive("https://files.example/broken.zip", "broken.zip")
    monkeypatch.setitem(prepare.ARCHIVES, name, (other,))
    env.files["/broken.zip"] = zip_of({"elsewhere/x.jpg": jpeg(0)})
    with pytest.raises(FileNotFoundError, match=rf"no folder {inner}/ \(it has \['elsewhere'\]\)"):
        prepare.extracted(name, tmp_path / "manual2", tmp_path / "downloads")
    assert tree(tmp_path / "manual2") == []  # The temp folder is gone.


def test_count_check_names_domain_and_both_counts():
    spec = domainbed.SPECS["vlcs"]
    found = dict(zip(spec.domains, spec.counts, strict=True))
    domainbed.check_counts(spec, found, "here")  # DomainBed's counts pass.
    found["SUN09"] = 3000
    with pytest.raises(domainbed.CountMismatchError) as err:
        domainbed.check_counts(spec, found, "/some/dir")
    message = str(err.value)
    assert "domain 'SUN09': 3,000 images, DomainBed's 3,282" in message and "/some/dir" in message
    assert "Caltech101" not in message and "--allow_count_mismatch" in message
    domainbed.check_counts(spec, found, "here", allow=True)  # The override: logged only.
    for name, spec in domainbed.SPECS.items():  # Each table adds up to its published total.
        assert spec.counts is None or sum(spec.counts) == spec.total, name


def test_a_bucket_data_dir_extracts_on_a_local_disk(tmp_path, monkeypatch):
    """Archives of a gs:// data dir go to $RICHFT_CACHE/downloads (extraction renames folders,
    which buckets cannot do); a local data dir keeps TFDS's <data_dir>/downloads; nothing named
    "gs:" appears in the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RICHFT_CACHE", str(tmp_path / "cache"))
    assert prepare.downloads_dir("gs://bucket/tfds") == tmp_path / "cache" / "downloads"
    assert prepare.downloads_dir(str(tmp_path / "tfds")) == tmp_path / "tfds" / "downloads"
    assert not (tmp_path / "gs:").exists()
