"""richft_jax.xla_cpu: which XLA_FLAGS the entry points set."""

import os

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
