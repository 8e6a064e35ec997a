"""The real command line, as the tests that start it in subprocesses build it."""

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
