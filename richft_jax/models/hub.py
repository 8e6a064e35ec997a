"""Published checkpoints by name, and `fetch(name)`: the local file, downloaded once.

`WEIGHTS` is the one registry of published weights (URLs, file format, architecture, the
preprocessing the source expects, sha256 where it is known). Downloads go to
`$RICHFT_CACHE/weights/<name>/<file>` (default `~/.cache/richft_jax`), atomically: a temp
file in that folder, fsynced, checked (complete, and the pinned sha256 if there is one), then
renamed, so a broken download never passes for a file. A sidecar `<file>.json` (sha256, source,
size) is what runs record. `RICHFT_WEIGHTS_MIRROR=http://host:port` serves every registered
https URL from a mirror (same path); a cached file is used offline as it is.
"""

import dataclasses
import hashlib
import http.client
import json
import os
import pathlib
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable

import tqdm
from absl import logging

from richft_jax import config_lib, paths

MIRROR_ENV = "RICHFT_WEIGHTS_MIRROR"
TIMEOUT_S = 60  # Per socket operation (connect, each read), not for the whole file.
PROBE_TIMEOUT_S = 2.5  # `probe`: for all of it, a DNS lookup that hangs offline included.
_CHUNK = 1 << 20
_LOG_EVERY = 256 << 20


class DownloadError(OSError):
    """Published weights could not be obtained: offline, an HTTP error, a broken download."""


class ChecksumError(ValueError):
    """A file's sha256 is not the one pinned in the registry."""


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published checkpoint: where it is (the first http(s) URL is downloaded; the others
    are documented alternatives), what it is, and how its inputs are preprocessed."""

    name: str
    arch: str  # The backbone in models.registry (config.model.name).
    fmt: str  # "big_vision_npz" | "torchvision_safetensors" (models.pretrained.FORMATS).
    urls: tuple[str, ...]
    normalize: str  # config.data.normalize the source was trained with.
    image_size: int
    what: str
    sha256: str | None = None  # None: not known here (never guessed).

    @property
    def file(self) -> str:
        """The file's name in the cache: the last part of its URL's path."""
        return urllib.parse.urlsplit(self.urls[0]).path.rsplit("/", 1)[-1]


_AUGREG_HTTPS = "https://storage.googleapis.com/vit_models/augreg/"
_AUGREG_GS = "gs://vit_models/augreg/"
AUGREG_INDEX = _AUGREG_HTTPS + "index.csv"  # Every augreg file (vision_transformer's list).
_S16 = "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0"
_B16 = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
_L16 = "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1"


def _augreg(name: str, arch: str, stem: str, what: str) -> Weights:
    file = stem + ".npz"
    urls = (_AUGREG_HTTPS + file, _AUGREG_GS + file)
    return Weights(name, arch, "big_vision_npz", urls, "minus_one_one", 224, what)


def _timm(name: str, arch: str, repo: str, what: str) -> Weights:
    url = f"https://huggingface.co/timm/{repo}/resolve/main/model.safetensors"
    return Weights(name, arch, "torchvision_safetensors", (url,), "imagenet", 224, what)


WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        _timm(
            "resnet50",
            "resnet50",
            "resnet50.tv2_in1k",
            'torchvision ResNet-50 IMAGENET1K_V2 ("ResNet #2")',
        ),
        _timm(
            "resnet50_v1",
            "resnet50",
            "resnet50.tv_in1k",
            'torchvision ResNet-50 IMAGENET1K_V1 ("ResNet #1")',
        ),
        _timm("resnet18", "resnet18", "resnet18.tv_in1k", "torchvision ResNet-18 IMAGENET1K_V1"),
        _timm(
            "resnet101", "resnet101", "resnet101.tv2_in1k", "torchvision ResNet-101 IMAGENET1K_V2"
        ),
        _timm(
            "resnet101_v1", "resnet101", "resnet101.tv_in1k", "torchvision ResNet-101 IMAGENET1K_V1"
        ),
        _augreg("vit_b16", "vit_b16", _B16, "augreg ViT-B/16, ImageNet-21k"),
        _augreg(
            "vit_b16_i1k",
            "vit_b16",
            _B16 + "--imagenet2012-steps_20k-lr_0.01-res_224",
            "augreg, ImageNet-21k then ImageNet-1k at 224",
        ),
        _augreg("vit_s16", "vit_s16", _S16, "augreg ViT-S/16, ImageNet-21k"),
        _augreg(
            "vit_s16_i1k",
            "vit_s16",
            _S16 + "--imagenet2012-steps_20k-lr_0.03-res_224",
            "augreg, ImageNet-21k then ImageNet-1k at 224",
        ),
        _augreg("vit_l16", "vit_l16", _L16, "augreg ViT-L/16, ImageNet-21k"),
        _augreg(
            "vit_l16_i1k",
            "vit_l16",
            _L16 + "--imagenet2012-steps_20k-lr_0.01-res_224",
            "augreg, ImageNet-21k then ImageNet-1k at 224",
        ),
    )
}


def get(name: str) -> Weights:
    """The registry entry `name`; an error listing the registered names otherwise."""
    if name not in WEIGHTS:
        raise ValueError(
            f"{name!r} is not a registered name of published weights: {list(WEIGHTS)}."
        )
    return WEIGHTS[name]


# ----------------------------------------------------------------------------- the cache
def cache_file(name: str) -> pathlib.Path:
    """Where `fetch(name)` keeps the file: $RICHFT_CACHE/weights/<name>/<file>, on the local
    disk only (downloads are renamed into place and fsynced); a URL there is refused, never
    taken for a local folder "gs:"."""
    root = config_lib.cache_path("weights")
    if paths.is_remote(root):
        raise ValueError(
            f"RICHFT_CACHE={os.environ.get('RICHFT_CACHE')!r}: the weights download cache "
            f"({name!r} goes to {root}/{name}) is on the local disk only. Set RICHFT_CACHE to a "
            "local folder, or copy the file into the bucket and give "
            "--config.pretrained.path=gs://BUCKET/FILE."
        )
    return pathlib.Path(root).expanduser() / name / get(name).file


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".json")


def mirrored(url: str, mirror: str | None = None, schemes: tuple[str, ...] = ("https://",)) -> str:
    """`url` with scheme and host replaced by the mirror's (its path prefixed): `mirror`, else
    $RICHFT_WEIGHTS_MIRROR; only URLs of `schemes` (the data downloads add http://)."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if not mirror or not url.startswith(schemes):
        return url
    m, u = urllib.parse.urlsplit(mirror), urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))


def fetch(name: str) -> pathlib.Path:
    """The local file of the published weights `name`: the cached one (checked against the
    pinned sha256), else downloaded once into the cache."""
    return pathlib.Path(provenance(name)["path"])


def provenance(name: str) -> dict:
    """`{"name", "file", "size", "sha256", "source", "path"}` of the weights `name`, fetched
    first when they are not cached; `source` is the URL the file came from ("by hand" for a
    file put into the cache by hand)."""
    entry, path = get(name), cache_file(name)
    if path.is_file():
        return _cached(entry, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = _download_first(entry, path)
    except BaseException:
        try:
            path.parent.rmdir()  # No empty cache folder left behind (kept if others use it).
        except OSError:
            pass
        raise
    _write_sidecar(path, info)
    return {**info, "path": str(path)}


def _download_first(entry: Weights, path: pathlib.Path) -> dict:
    """Downloads the first of the entry's http(s) URLs (mirrored) that answers."""
    failures = []
    for url in (mirrored(u) for u in entry.urls if u.startswith(("https://", "http://"))):
        try:
            return _download(entry, url, path)
        except Unreachable as e:
            failures.append(f"{url} ({e})")
    raise DownloadError(_unavailable(entry, path, failures))


def _unavailable(entry: Weights, path: pathlib.Path, failures: list[str]) -> str:
    """The one error for weights neither cached nor downloadable: what was tried, where the
    file can be put by hand, and the mirror variable."""
    return (
        f"Published weights {entry.name!r} ({entry.what}) are not cached and could not be "
        f"downloaded from {'; '.join(failures)}. Put the file by hand at {path} (it is "
        f"{' or '.join(entry.urls)}), or set {MIRROR_ENV}=http://host:port to a mirror that "
        "serves the same paths (the cache is $RICHFT_CACHE/weights, default "
        "~/.cache/richft_jax/weights)."
    )


def _cached(entry: Weights, path: pathlib.Path) -> dict:
    """The sidecar of a cached file; a file put there by hand (or changed since) is checked
    and hashed once. A digest other than the pinned one is refused."""
    stat = path.stat()
    try:
        info = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("size") != stat.st_size or info.get("mtime_ns") != stat.st_mtime_ns:
        if broken := incomplete(path, entry.fmt):
            raise DownloadError(
                f"{path}: not a complete {entry.fmt} file ({broken}); delete it to download "
                f"{entry.name!r} again."
            )
        info = _info(entry, "by hand", file_sha256(path), path)
        _write_sidecar(path, info)
    if entry.sha256 and info["sha256"] != entry.sha256:
        raise ChecksumError(
            f"{path}: sha256 {info['sha256']} is not the pinned {entry.sha256} of "
            f"{entry.name!r}; refused (delete the file to download it again)."
        )
    return {**info, "path": str(path)}


def _info(entry: Weights, source: str, sha256: str, path: pathlib.Path) -> dict:
    stat = path.stat()
    return {
        "name": entry.name,
        "file": path.name,
        "size": stat.st_size,
        "sha256": sha256,
        "source": source,
        "mtime_ns": stat.st_mtime_ns,  # Tells a file replaced by hand later from this one.
    }


def _write_sidecar(path: pathlib.Path, info: dict) -> None:
    """Writes `<file>.json` atomically; a read-only cache only loses the record."""
    side = _sidecar(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".part", dir=side.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, side)
    except OSError as e:
        logging.warning("Could not write %s (%s); the weights are used without it.", side, e)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def incomplete(path: str | os.PathLike, fmt: str) -> str | None:
    """Why the file is not a complete `fmt` file (read from its index only), or None: a zip's
    central directory (.npz), a safetensors header whose tensors end at the file's end."""
    path = pathlib.Path(path)
    try:
        if fmt == "big_vision_npz":
            with zipfile.ZipFile(path) as z:
                z.infolist()
            return None
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"a header of {n} bytes in a file of {size}"
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if size != 8 + n + max(ends, default=0):
            return f"{size} bytes, its header says {8 + n + max(ends, default=0)}"
        return None
    except (zipfile.BadZipFile, struct.error, ValueError, KeyError, TypeError, OSError) as e:
        return f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------- checking
def probe(name: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[str | None, list[str]]:
    """(the first of the entry's http(s) URLs, mirrored as `fetch` would download them, that
    answers, or None; "URL (why not)" for each that did not), within `timeout` seconds in all.
    A HEAD request (a GET of the first byte where HEAD is refused): nothing is downloaded."""
    urls = [mirrored(u) for u in get(name).urls if u.startswith(("https://", "http://"))]
    answers = {}

    def ask(url: str) -> None:
        answers[url] = _why_not(url, timeout)

    threads = [threading.Thread(target=ask, args=(u,), daemon=True) for u in urls]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:  # Daemons: one still waiting (say on DNS) is left behind, not waited for.
        t.join(max(0.0, deadline - time.monotonic()))
    failures = []
    for url in urls:
        if url not in answers:
            failures.append(f"{url} (no answer within {timeout:g} s)")
        elif answers[url] is None:
            return url, []
        else:
            failures.append(f"{url} ({answers[url]})")
    return None, failures


class _SameMethodRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects keeping the method (urllib turns a redirected HEAD into a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


def _why_not(url: str, timeout: float) -> str | None:
    """None if `url` answers 2xx (after redirects), else why not."""
    opener = urllib.request.build_opener(_SameMethodRedirect)
    for method, extra in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        headers = {"User-Agent": "richft_jax", **extra}
        request = urllib.request.Request(url, headers=headers, method=method)
        try:
            with opener.open(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as e:
            e.close()
            if method == "HEAD" and e.code in (405, 501):  # HEAD not allowed: ask for a byte.
                continue
            return f"HTTP {e.code} {e.reason}"
        except (OSError, http.client.HTTPException) as e:
            return str(e.reason if type(e) is urllib.error.URLError else e)
    return "HEAD and a GET of one byte refused"


def by_hand(name: str) -> str:
    """How to put the weights `name` into the cache without this code downloading them: the
    exact commands, and the mirror variable."""
    entry, path = get(name), cache_file(name)
    https = [u for u in entry.urls if u.startswith(("https://", "http://"))]
    others = [u for u in entry.urls if u not in https]
    also = f" (also at {', '.join(others)})" if others else ""
    return (
        f"on a machine with network `curl -fL --create-dirs -o {path} {https[0]}`"
        f"{also}, then copy the file to the same path here; or set {MIRROR_ENV}=http://HOST:PORT "
        "to a mirror that serves the same paths"
    )


# ----------------------------------------------------------------------------- downloading
class Unreachable(DownloadError):
    """Nothing was received from a URL (refused, unknown host, HTTP error): try the next."""


def _download(entry: Weights, url: str, path: pathlib.Path) -> dict:
    """Downloads `url` to `path` atomically; the sidecar's dict."""
    logging.info("Downloading %s (%s) to %s.", entry.name, url, path)

    def check(tmp: str) -> str | None:
        why = incomplete(tmp, entry.fmt)
        return why and f"{entry.fmt}: {why}"

    digest = download_file(url, path, entry.name, entry.sha256, check)
    return _info(entry, url, digest, path)


def download_file(
    url: str,
    path: pathlib.Path,
    what: str,
    sha256: str | None = None,
    check: Callable[[str], str | None] | None = None,
) -> str:
    """Downloads `url` to `path` atomically (a temp file in its folder, fsynced, checked, then
    renamed); its sha256. `check(temp_path)` says why a download is not a complete file (or
    None). Nothing is left behind (no file, no temp file) when it breaks off or does not check.
    Unreachable if nothing was received; DownloadError / ChecksumError otherwise."""
    request = urllib.request.Request(url, headers={"User-Agent": "richft_jax"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(e.reason if type(e) is urllib.error.URLError else e) from e
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError:
        response.close()
        raise
    try:
        with response, os.fdopen(fd, "wb") as out:
            digest = _copy(response, out, url, path)
            out.flush()
            os.fsync(out.fileno())
        if sha256 and digest != sha256:
            raise ChecksumError(
                f"Download of {url}: {path.name} has sha256 {digest}, not the pinned "
                f"{sha256} of {what!r}; refused, nothing was kept."
            )
        if check is not None and (broken := check(tmp)):
            raise DownloadError(
                f"Download of {url}: not a complete file ({broken}); nothing was kept."
            )
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return digest


def _copy(response, out, url: str, path: pathlib.Path) -> str:
    """Streams the response into `out`; its sha256. A connection that drops before
    Content-Length bytes arrived is an error naming the URL."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    h, size = hashlib.sha256(), 0
    retry = f"nothing was cached; run again to retry, or put the file by hand at {path}"
    # A progress bar on a terminal (disable=None: off when stderr is not one, as in logs).
    bar = tqdm.tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name, disable=None
    )
    try:
        with bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
                if bar.disable and size % _LOG_EVERY < len(chunk):
                    mib = total and total >> 20
                    logging.info("%s: %d of %s MiB.", path.name, size >> 20, mib)
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f"Download of {url} broke off after {size:,} bytes ({type(e).__name__}: {e}); {retry}."
        ) from e
    if total is not None and size != total:
        raise DownloadError(
            f"Download of {url} broke off after {size:,} of {total:,} bytes; {retry}."
        )
    return h.hexdigest()


def _fsync_dir(path: pathlib.Path) -> None:
    """Makes a rename in `path` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
