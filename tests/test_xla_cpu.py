"""richft_jax.xla_cpu: which XLA_FLAGS the entry points set."""

import os
import subprocess
import sys

from richft_jax import xla_cpu


def test_flags_added_on_measured_versions_only():
    assert xla_cpu.flags_for("0.10.2", "") == "--xla_cpu_experimental_ynn_fusion_type="
    kept = "--xla_force_host_platform_device_count=8"
    assert xla_cpu.flags_for("0.10.2", kept) == kept + " --xla_cpu_experimental_ynn_fusion_type="
    assert xla_cpu.flags_for("0.11.0", kept) == kept  # Not measured there: nothing added.
    assert xla_cpu.flags_for("0.10.2", kept, enabled="0") == kept


def test_a_users_own_value_wins():
    own = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_cpu.flags_for("0.10.2", own) == own


def test_this_test_session_runs_with_them():
    """conftest applied them before JAX started (so tests run what users run)."""
    assert "--xla_cpu_experimental_ynn_fusion_type=" in os.environ["XLA_FLAGS"].split()


def test_simulated_devices_get_a_thread_pool_twice_their_number():
    flags = "--xla_force_host_platform_device_count=8"
    assert xla_cpu.thread_pool_env(flags, {}) == {"NPROC": str(max(16, os.cpu_count()))}
    assert xla_cpu.thread_pool_env(flags, {"NPROC": "3"}) == {}  # The user's wins.
    assert xla_cpu.thread_pool_env(flags, {"PJRT_NPROC": "3"}) == {}
    assert xla_cpu.thread_pool_env("--xla_force_host_platform_device_count=1", {}) == {}
    assert xla_cpu.thread_pool_env("", {}) == {}  # One device: XLA's own pool.


def test_xla_starts_that_many_pool_threads():
    """The pool XLA's CPU client built in a process started with the session's environment."""
    code = (
        "import os, jax, jax.numpy as jnp\n"
        "jax.jit(lambda x: x @ x)(jnp.ones((8, 8))).block_until_ready()\n"
        "tasks = os.listdir('/proc/self/task')\n"
        "names = [open(f'/proc/self/task/{t}/comm').read() for t in tasks]\n"
        "print(sum(name.strip() == 'tf_XLAEigen' for name in names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == int(os.environ["NPROC"]) == max(16, os.cpu_count())
