"""JAX's persistent compilation cache, in the project's cache directory by default: a later run
(or test process) of the same step function loads its executable instead of compiling it
again, which on a CPU is seconds per function.

RICHFT_COMPILATION_CACHE=DIR puts it elsewhere (a gs:// path works, as JAX takes it);
RICHFT_COMPILATION_CACHE=off turns it off.
"""

import os

ENV = "RICHFT_COMPILATION_CACHE"
OFF = ("off", "0", "false", "none")
# Programs that compile faster than this are not stored. A local cache reads a small program
# back in 1-6 ms (the demo's five of 0.03-0.16 s: XLA's compile time in its cached run 0.7 ->
# 0.35 s against a 0.2 s floor); a remote one (gs://) pays a round trip per file, so only slower
# compiles are stored there.
MIN_COMPILE_SECONDS = 0.01
MIN_COMPILE_SECONDS_REMOTE = 0.2


def enable() -> str | None:
    """Points JAX at the cache directory (before the first compilation); returns it, or None
    when turned off."""
    import jax  # noqa: PLC0415  (entry points import this before JAX's backends start)

    from richft_jax import config_lib  # noqa: PLC0415

    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    path = value or config_lib.cache_path("jax_compilation_cache")
    path = path if "://" in path else os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds(path))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def min_compile_seconds(path: str) -> float:
    """The shortest compile the cache at `path` stores (a URL's is the remote floor)."""
    return MIN_COMPILE_SECONDS_REMOTE if "://" in path else MIN_COMPILE_SECONDS
