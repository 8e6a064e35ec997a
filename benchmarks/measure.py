"""Framework-free measurements the JAX harness and the PyTorch twins share: time per call and
the host-memory peak of a call, measured the same way for both frameworks."""

import ctypes
import pathlib
import time
from collections.abc import Callable


def timeit(fn: Callable[[], object], n: int) -> float:
    """Seconds per call of fn() (which must block), after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_rss_growth(fn: Callable[[], object]) -> int | None:
    """How far the process's resident memory rises above its level before `fn()` at peak.

    Host-memory peaks the same way for any framework (Linux only, else None): freed heap pages
    go back to the OS first (malloc_trim), the high-water mark is reset (clear_refs 5), and
    VmHWM after the call minus VmRSS before it is what the call needed on top of what was
    already resident (its persistent state).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = _status_bytes("VmRSS")
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except (OSError, KeyError, AttributeError):
        return None
    fn()
    return max(0, _status_bytes("VmHWM") - before)
