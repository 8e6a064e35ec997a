"""The real command line, as the tests that start it in subprocesses build it."""

import os
import sys


def demo_command(workdir, data_dir, *extra: str, overrides: dict | None = None) -> list[str]:
    """`python -m richft_jax.main` on the tiny demo config with the test's data dir, then
    `--config.KEY=VALUE` for each override, then `extra` flags."""
    flags = [f"--config.{k}={v}" for k, v in (overrides or {}).items()]
    return [
        sys.executable,
        "-m",
        "richft_jax.main",
        "--config=configs/demo.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *flags,
        *extra,
    ]


def env_with_devices(n: int) -> dict:
    """This process's environment (its XLA flags too: subprocesses compile what the tests do) with
    n simulated CPU devices, for the CLI in a subprocess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    # A cross-process collective (Orbax's save barriers) waits up to 5 min, not XLA's 40 s, before
    # aborting: on 2 loaded cores one process can lag the other that long (seen: -6 at a save).
    flags.append("--xla_cpu_collective_call_terminate_timeout_seconds=300")
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
    return env
