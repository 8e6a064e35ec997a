"""Test setup: 8 simulated CPU devices, so every test also exercises data parallelism."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from richft_jax import xla_cpu  # noqa: E402

xla_cpu.tune()  # The CPU flags the entry points use: tests run what users run.


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir per test session: the real builders prepare into it once."""
    return tmp_path_factory.mktemp("tfds")
