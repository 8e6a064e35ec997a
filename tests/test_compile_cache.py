"""The persistent compilation cache: on by default in the cache directory, movable and
switchable by RICHFT_COMPILATION_CACHE, and hit by a second process compiling the same step."""

import os
import subprocess
import sys

from richft_jax import compile_cache

SCRIPT = """
import sys
from richft_jax import compile_cache
print("CACHE", compile_cache.enable())
import jax, jax.numpy as jnp
print("JAX_CACHE_DIR", jax.config.jax_compilation_cache_dir)
if sys.argv[1:] == ["no_compile"]:
    sys.exit()

def f(x):  # Compiles in ~0.6 s at the tests' -O0: above the cache's 0.2 s floor (40: 0.21 s).
    for i in range(120):
        x = jnp.tanh(x @ x.T + i)
    return x

jax.jit(f)(jnp.ones((32, 32))).block_until_ready()
"""


def run_script(env: dict, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = {**os.environ, compile_cache.ENV: str(tmp_path / "jax")}
    assert f"CACHE {tmp_path / 'jax'}" in run_script(env)
    first = sorted(p.name for p in (tmp_path / "jax").iterdir())
    assert any(name.startswith("jit_f-") for name in first), first
    run_script(env)
    assert sorted(p.name for p in (tmp_path / "jax").iterdir()) == first  # Hits: nothing new.


def test_default_is_the_cache_directory_and_off_turns_it_off(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV}
    env["RICHFT_CACHE"] = str(tmp_path / "cache")
    assert f"CACHE {tmp_path / 'cache' / 'jax_compilation_cache'}" in run_script(env)
    assert any((tmp_path / "cache" / "jax_compilation_cache").iterdir())
    env[compile_cache.ENV] = "off"
    off = run_script(env, "no_compile")  # JAX is left with no cache directory: nothing to run.
    assert "CACHE None" in off and "JAX_CACHE_DIR None" in off
