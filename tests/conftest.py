"""Test setup: 8 simulated CPU devices, so every test also exercises data parallelism."""

import ast
import gc
import os
import tempfile

from jaxlib import version as jaxlib_version  # The version only: no backend starts.

from richft_jax import xla_cpu  # Imports neither JAX nor TensorFlow.

# The garbage collector stays off while the worker imports JAX, TensorFlow and the test files
# (millions of objects that never become garbage), then what is alive is frozen out of its sight
# (pytest_runtestloop), as the entry points do (cli.importing).
gc.disable()

# LLVM at -O0 for the tests' programs: the same HLO, shardings and numerics to rounding, compiled
# about a third faster (tests/test_methods.py alone, an empty cache: 63.9 -> 42.1 s), and most of
# the suite's time is compiling tiny programs, not running them. Subprocesses inherit it. A flag
# already in XLA_FLAGS wins, so `XLA_FLAGS=--xla_backend_optimization_level=2 pytest` tests the
# users' code generation.
# Fusions through XLA's older LLVM emitters, not its MLIR fusion emitters: those build and tear
# down an MLIR context with every dialect for each compilation (`perf`, tests/test_methods.py: 16 %
# of the file's CPU in ParallelFusionEmitter::CompileFusion, 7 % loading dialects). Empty cache,
# one file at a time: test_methods 49.8 -> 40.6 s, test_vit 36.1 -> 25.3 s, test_linearization
# 27.9 -> 15.3 s. Not for users' runs: the small ViT's step measured up to 10 % slower with it.
# Like xla_cpu's flags, only on the jaxlib versions it was measured on (XLA aborts on a flag it
# does not know, and this one names an emitter XLA may retire).
TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
if jaxlib_version.__version__.startswith(xla_cpu.MEASURED_ON):
    TEST_XLA_FLAGS += ("--xla_cpu_use_fusion_emitters=false",)
_given = {f.split("=")[0] for f in os.environ.get("XLA_FLAGS", "").split()}
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), *(f for f in TEST_XLA_FLAGS if f.split("=")[0] not in _given)]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One JAX compilation cache for the test session's processes (xdist workers and the runs tests
# start as subprocesses), as the entry points use one: a step compiled once is loaded after.
os.environ.setdefault(
    "RICHFT_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "richft_tests_jax_cache")
)

from richft_jax import compile_cache  # noqa: E402

xla_cpu.tune()  # The CPU flags the entry points use: tests run what users run.
compile_cache.enable()


import pytest  # noqa: E402

# The files that take minutes (most of it a module fixture's runs), slowest first, run first:
# with pyproject's `-n 2 --dist loadfile --no-loadscope-reorder` the two workers then share out
# the many short files at the end and finish together, instead of one waiting on the other's
# last long file (xdist's default order is by number of tests: these, with few, came last).
SLOW_FIRST = (
    "test_notebook.py",
    "test_gcs_readers.py",
    "test_end_to_end.py",
    "test_gcs.py",
    "test_preemption.py",
    "test_distributed.py",
    "test_benchmark.py",
)


# Collections of the youngest generation every 10,000 net allocations (Python's default: 700):
# tests trace and compile thousands of small programs, whose objects made the collector 13 % of
# a test file's CPU time (perf, tests/test_paper_schedule.py), each full collection walking all
# that the worker keeps alive. The same objects are collected, less often.
GC_THRESHOLD = (10_000, 10, 10)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """Before the tests (after collection; in xdist's controller and workers alike): garbage
    collected once, the rest frozen, the collector back on (GC_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    gc.enable()


def pytest_collection_modifyitems(config, items):
    """SLOW_FIRST's files first, in its order; the others after, in collection order."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable.


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir per test session: the real builders prepare into it once."""
    return tmp_path_factory.mktemp("tfds")


# The letters splits of a tiny pretraining started in a subprocess (which cannot shrink them as
# test_end_to_end.py does in-process): it draws 30 x 64 images, so 2,080 are as many as it sees
# of the 40,000 (which take minutes to render on a 2-core machine).
SMALL_LETTERS = {"train": 2080, "test": 520}


@pytest.fixture(scope="session")
def pretraining_data_dir(data_dir, tmp_path_factory):
    """A data dir for the tiny demo that pretrains its backbone in a subprocess: the session's
    digits (built once, linked) and its own letters built at SMALL_LETTERS sizes (not the
    session data dir's, whose letters other tests build at their own sizes)."""
    import gcs_emulator  # noqa: PLC0415

    from richft_jax.data import letters, sources  # noqa: PLC0415

    gcs_emulator.build_demo_data(data_dir)
    root = tmp_path_factory.mktemp("tfds_pretraining")
    (root / "digits_domains").symlink_to(data_dir / "digits_domains")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(letters, "SPLIT_SIZES", SMALL_LETTERS)
        built = sources.load_arrays("letters", data_dir=str(root))
    assert {split: len(labels) for split, (_, labels) in built.items()} == SMALL_LETTERS
    return root


def parse_python(source: str) -> ast.Module:
    """ast.parse, retried on CPython 3.11's spurious SystemError "AST constructor recursion
    depth mismatch" (python/cpython#106905: the AST builder's depth counter is shared, and a
    thread left by an earlier test in the same worker can build an AST at the same moment)."""
    for attempt in range(3):
        try:
            return ast.parse(source)
        except SystemError as e:
            if "recursion depth mismatch" not in str(e) or attempt == 2:
                raise
    raise AssertionError("unreachable")
