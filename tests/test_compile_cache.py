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
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None
)
print("JAX_CACHE_DIR", jax.config.jax_compilation_cache_dir)
print("FLOOR", jax.config.jax_persistent_cache_min_compile_time_secs)
if sys.argv[1:] == ["no_compile"]:
    sys.exit()

def f(x):  # Compiles in ~0.26 s with the tests' XLA flags: above either floor of the cache's.
    for i in range(120):
        x = jnp.tanh(x @ x.T + i)
    return x

jax.jit(f)(jnp.ones((32, 32))).block_until_ready()
print("HITS", len(hits))
"""


def run_script(env: dict, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = {**os.environ, compile_cache.ENV: str(tmp_path / "jax")}
    out = run_script(env)
    assert f"CACHE {tmp_path / 'jax'}" in out
    assert f"FLOOR {compile_cache.MIN_COMPILE_SECONDS}" in out
    assert "HITS 0" in out
    (entry,) = (tmp_path / "jax").glob("jit_f-*")
    written = entry.stat().st_mtime_ns
    # The second process reads f back (programs that compile near the floor may differ).
    assert "HITS 0" not in run_script(env)
    assert entry.stat().st_mtime_ns == written


def test_default_is_the_cache_directory_and_off_turns_it_off(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != compile_cache.ENV}
    env["RICHFT_CACHE"] = str(tmp_path / "cache")
    assert f"CACHE {tmp_path / 'cache' / 'jax_compilation_cache'}" in run_script(env)
    assert any((tmp_path / "cache" / "jax_compilation_cache").iterdir())
    env[compile_cache.ENV] = "off"
    off = run_script(env, "no_compile")  # JAX is left with no cache directory: nothing to run.
    assert "CACHE None" in off and "JAX_CACHE_DIR None" in off


def test_a_remote_cache_stores_only_slower_compiles():
    """A local cache reads small programs back in milliseconds; a gs:// one pays a round trip."""
    assert compile_cache.min_compile_seconds("/home/u/.cache/jax") == 0.01
    assert compile_cache.min_compile_seconds("gs://bucket/jax") == 0.2
    assert compile_cache.MIN_COMPILE_SECONDS < compile_cache.MIN_COMPILE_SECONDS_REMOTE
