"""Where a run's wall time goes: seconds per phase, and JAX's compilation time across them.

A run's summary.json carries `timings_s` (from `Phases.summary`) so the wall time can be read
against the train steps alone: startup (process start to the run: imports, flags, preflight;
only when `python -m richft_jax.main` started the process), data, init, setup (checkpoint
managers, the jitted steps, writers), train steps, input waits, evaluation, checkpoint saves,
teardown (the input pipeline, the writers), end-of-run evaluators.
"""

import collections
import contextlib
import os
import threading
import time
from collections.abc import Iterator

# JAX's duration events that are compilation (tracing, lowering, XLA compile or cache load).
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = 0.0
_listening = False
_lock = threading.Lock()


def _on_duration(event: str, seconds: float, **_) -> None:
    global _compile_seconds
    if event in _COMPILE_EVENTS:
        with _lock:
            _compile_seconds += seconds


def compile_seconds() -> float:
    """Seconds JAX has spent compiling in this process since `listen_for_compiles`."""
    return _compile_seconds


def listen_for_compiles() -> None:
    """Starts summing JAX's compilation durations (once per process)."""
    global _listening
    if not _listening:
        import jax  # noqa: PLC0415  (this module stays importable without JAX)

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that is unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Phases:
    """Wall seconds per named phase (`with phases("eval"): ...`); nested phases are
    subtracted from the phase around them, so the phases add up to the elapsed time.

    `startup_s`: the seconds before the run began, counted as phase "startup" and in the
    total; given only by the entry point that started the process (main.py: the process's
    age). In-process (a notebook, pytest, a nested pretraining run) there is none: the whole
    process's life until then is not the run's.
    """

    def __init__(self, startup_s: float | None = None) -> None:
        self.start = time.perf_counter()
        self.startup = startup_s
        self.compile_start = compile_seconds()
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._stack: list[str] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - t0
            self.seconds[name] += elapsed
            if self._stack:
                self.seconds[self._stack[-1]] -= elapsed

    def timed_iter(self, iterable, name: str) -> Iterator:
        """Yields `iterable`'s items, the waits for each counted as phase `name`."""
        it = iter(iterable)
        while True:
            with self(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def summary(self) -> dict[str, float]:
        """{phase: s}, with "other" (not in any phase), "startup" (before the run began, when
        given), "total" and "compile_within" (JAX compilation inside the phases, for reading
        them; not a phase of its own)."""
        elapsed = time.perf_counter() - self.start
        out = {k: round(v, 2) for k, v in self.seconds.items()}
        out["other"] = round(elapsed - sum(self.seconds.values()), 2)
        if self.startup is not None:
            out["startup"] = round(self.startup, 2)
        out["total"] = round(elapsed + (self.startup or 0.0), 2)
        out["compile_within"] = round(compile_seconds() - self.compile_start, 2)
        return out


def breakdown_line(timings: dict[str, float], order: tuple[str, ...]) -> str:
    """`total 142 s = train steps 55 + eval 30 + ...` for the console (largest first after
    `order`'s phases)."""
    parts = [k for k in order if k in timings]
    rest = sorted(
        (k for k in timings if k not in parts and k not in ("total", "compile_within")),
        key=lambda k: -timings[k],
    )
    body = " + ".join(f"{k.replace('_', ' ')} {timings[k]:.1f}" for k in parts + rest)
    return (
        f"time {timings['total']:.1f} s = {body} (JAX compilation within them: "
        f"{timings['compile_within']:.1f} s)"
    )
