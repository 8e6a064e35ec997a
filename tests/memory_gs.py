"""An in-memory gs:// for unit tests: epath's gs:// paths (through fsspec, as with
EPATH_USE_TF=false) read and write a dict of this process, without a network or an emulator.

It checks that a reader keeps a URL a URL (asks for gs://bucket/run/..., never ./gs:/...);
Orbax's tensorstore does not go through fsspec, so checkpoints on a bucket are left to the
emulator tests (tests/test_gcs.py).
"""

import contextlib
import importlib
import os
from collections.abc import Iterator

import fsspec
from etils.epath import backend, gpath
from fsspec.implementations.memory import MemoryFileSystem

SCHEMES = ("gs", "gcs")


class MemoryGCS(MemoryFileSystem):
    """fsspec's memory file system under gs://, naming objects as gcsfs does ("bucket/key")."""

    protocol = SCHEMES
    root_marker = ""
    store: dict = {}
    pseudo_dirs: list = [""]

    @classmethod
    def _strip_protocol(cls, path) -> str:
        path = os.fspath(path)
        for scheme in SCHEMES:
            path = path.removeprefix(f"{scheme}://")
        return path.strip("/")


def _clear_epath_caches() -> None:
    """epath caches whether it uses TensorFlow and its fsspec file systems: both re-read."""
    gpath._is_tf_installed.cache_clear()
    backend.fsspec_backend._get_filesystem.cache_clear()


@contextlib.contextmanager
def memory_gs(monkeypatch) -> Iterator[type[MemoryGCS]]:
    """gs:// served from memory while the block runs (fresh and empty); the class, whose
    `store` maps "bucket/key" to the objects, for the test to look into."""
    monkeypatch.setenv("EPATH_USE_TF", "false")
    registry = importlib.import_module("fsspec.registry")._registry  # The writable one.
    saved = {s: registry.get(s) for s in SCHEMES}
    for scheme in SCHEMES:
        fsspec.register_implementation(scheme, MemoryGCS, clobber=True)
    MemoryGCS.store.clear()
    MemoryGCS.pseudo_dirs[:] = [""]
    _clear_epath_caches()
    try:
        yield MemoryGCS
    finally:
        for scheme, cls in saved.items():
            if cls is None:
                registry.pop(scheme, None)  # gcsfs again, imported when first used.
            else:
                registry[scheme] = cls
        MemoryGCS.store.clear()
        _clear_epath_caches()  # EPATH_USE_TF is re-read once monkeypatch restores it.
