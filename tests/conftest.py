"""Test setup: 8 simulated CPU devices, so every test also exercises data parallelism."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One JAX compilation cache for the test session's processes (xdist workers and the runs tests
# start as subprocesses), as the entry points use one: a step compiled once is loaded after.
os.environ.setdefault(
    "RICHFT_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), "richft_tests_jax_cache")
)

from richft_jax import compile_cache, xla_cpu  # noqa: E402

xla_cpu.tune()  # The CPU flags the entry points use: tests run what users run.
compile_cache.enable()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir per test session: the real builders prepare into it once."""
    return tmp_path_factory.mktemp("tfds")
