"""The suite-time accounting: its sitecustomize records a process's life and JAX's compile
events by test, without importing JAX itself; the summary adds them up per test file."""

import collections
import json
import os
import subprocess
import sys

import pytest

from benchmarks.suite_accounting import sitecustomize, summarize
from richft_jax import compile_cache

COMPILE = summarize.COMPILE


def test_summary_adds_up_processes_and_compile_seconds_per_file():
    records = [
        {"test": "tests/test_a.py::t1", "seconds": 4.0, "tensorflow": True, "events": {}},
        {
            "test": "tests/test_a.py::t2",
            "seconds": 2.0,
            "tensorflow": False,
            "events": {
                f"tests/test_a.py::t2|{COMPILE}": 3.0,
                f"tests/test_a.py::t2|{COMPILE}#n": 3,
                f"tests/test_a.py::t2|{COMPILE}#under_floor": 2.4,
                f"tests/test_a.py::t2|{summarize.LOAD}": 1.6,
            },
        },
        {
            "test": "",
            "seconds": 99.0,
            "tensorflow": True,
            "events": {f"tests/test_b.py::t|{COMPILE}": 10.0},
        },
    ]
    table = summarize.summarize(records).splitlines()
    assert table[0].startswith("| file | processes | tensorflow | process_s | compile_s | compiles")
    assert table[2] == "| tests/test_b.py | 0 | 0 | 0 | 10 | 0 | 0 | 0 | 0 | 0 |"  # Slowest first.
    assert table[3] == "| tests/test_a.py | 2 | 1 | 6 | 3 | 3 | 2 | 0 | 2 | 0 |"
    assert table[4] == "| total | 2 | 1 | 6 | 13 | 3 | 2 | 0 | 2 | 0 |"  # Not the worker's life.


def test_a_process_is_recorded_with_its_compiles_and_without_importing_jax(tmp_path):
    env = dict(
        os.environ, RICHFT_SUITE_ACCOUNTING=str(tmp_path), PYTHONPATH="benchmarks/suite_accounting"
    )
    env["PYTEST_CURRENT_TEST"] = "tests/test_x.py::t (call)"
    code = "import sys; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    code = "import jax; jax.jit(lambda x: x * 2 + 1)(1.0)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    first, second = [
        json.loads(line) for line in (tmp_path / "processes.jsonl").read_text().splitlines()
    ]
    assert first["test"] == second["test"] == "tests/test_x.py::t"
    assert not first["jax"] and not first["events"] and second["jax"]
    compiled = second["events"][f"tests/test_x.py::t|{COMPILE}"]
    assert compiled > 0 and second["events"][f"tests/test_x.py::t|{COMPILE}#n"] == 1
    # One compile: its time counts under the cache's floor exactly when it is shorter.
    under = compiled if compiled < sitecustomize.CACHE_FLOOR_S else 0.0
    assert second["events"].get(f"tests/test_x.py::t|{COMPILE}#under_floor", 0.0) == under


def test_only_compiles_shorter_than_the_floor_count_under_it(monkeypatch):
    monkeypatch.setattr(sitecustomize, "_EVENTS", collections.Counter())
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_x.py::t (call)")
    floor = sitecustomize.CACHE_FLOOR_S
    for seconds in (floor / 2, floor * 10, floor / 4):
        sitecustomize._listen(COMPILE, seconds)
    sitecustomize._listen("/jax/core/compile/jaxpr_trace_duration", floor / 2)
    key = f"tests/test_x.py::t|{COMPILE}"
    events = sitecustomize._EVENTS
    assert events[key] == pytest.approx(floor * 10.75) and events[key + "#n"] == 3
    assert events[key + "#under_floor"] == pytest.approx(floor * 0.75)


def test_the_floor_it_counts_under_is_the_compilation_caches():
    assert sitecustomize.CACHE_FLOOR_S == compile_cache.MIN_COMPILE_SECONDS
