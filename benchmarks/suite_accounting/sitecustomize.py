"""Where the test suite's time goes, per test: every Python process it starts (how long it
lived, whether it imported TensorFlow / JAX) and JAX's own compile and cache timings.

Loaded by Python at start when this folder is on PYTHONPATH (subprocesses inherit it):

    RICHFT_SUITE_ACCOUNTING=/tmp/acct PYTHONPATH=benchmarks/suite_accounting python -m pytest -q
    python -m benchmarks.suite_accounting.summarize /tmp/acct

Writes one JSON line per process into $RICHFT_SUITE_ACCOUNTING/processes.jsonl. JAX is never
imported by this file: its listener is registered when the process imports JAX itself, so tests
that check a command imports neither TensorFlow nor JAX still pass.
"""

import atexit
import collections
import importlib.abc
import importlib.util
import json
import os
import pathlib
import sys
import time

OUT = os.environ.get("RICHFT_SUITE_ACCOUNTING")
_START = time.time()
_EVENTS: collections.Counter = collections.Counter()


def _test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]


# Compiles shorter than this are never stored in the persistent cache (compile_cache.py's
# MIN_COMPILE_SECONDS): every process pays them again. Kept here so JAX is never imported.
CACHE_FLOOR_S = 0.01


def _listen(event: str, duration: float, **_) -> None:
    key = f"{_test()}|{event}"
    _EVENTS[key] += duration
    if event == "/jax/core/compile/backend_compile_duration":
        _EVENTS[key + "#n"] += 1
        _EVENTS[key + "#under_floor"] += duration if duration < CACHE_FLOOR_S else 0.0


class _AfterJax(importlib.abc.MetaPathFinder):
    """Registers the duration listener once `jax.monitoring` has been imported by the process."""

    def find_spec(self, name, path=None, target=None):
        if name != "jax.monitoring":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.register_event_duration_secs_listener(_listen)

        spec.loader.exec_module = exec_module
        return spec


def _write() -> None:
    record = {
        "pid": os.getpid(),
        "argv": sys.argv[:3],
        "test": _test(),
        "seconds": time.time() - _START,
        "tensorflow": "tensorflow" in sys.modules,
        "jax": "jax" in sys.modules,
        "events": dict(_EVENTS),
    }
    out = pathlib.Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "processes.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


if OUT:
    sys.meta_path.insert(0, _AfterJax())
    atexit.register(_write)
