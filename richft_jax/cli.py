"""The one way an entry point starts: absl flags defined when it starts, its doc and key flags
in --help, then `app.run(main)`.

Flags are defined at start, not at import, because entry points share flag names (--out) and
tests import several of them into one process. This module imports nothing heavy: the console
and JAX's compilation cache (which imports JAX; not for entry points without JAX, such as the
report) are set up after the entry point's `first` step (main's preflight), which then runs
within a second of the start.
"""

import contextlib
import gc
import importlib
import logging as py_logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import app, flags, logging

# Libraries whose INFO lines (hundreds per run: every Orbax save and restore step, TFDS's
# builder chatter, clu's work-unit notes, JAX's backend probing) bury the run's own; their
# warnings and errors still show.
QUIET_LIBRARIES = (
    "/orbax/",
    "/tensorflow_datasets/",
    "/etils/",
    "/gcsfs/",
    "/fsspec/",
    "/clu/platform/",
    "/jax/_src/xla_bridge.py",
)


class LibraryInfoFilter(py_logging.Filter):
    """Drops records below WARNING logged from the files of `QUIET_LIBRARIES`."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return record.levelno >= py_logging.WARNING or not any(q in path for q in QUIET_LIBRARIES)


def quiet_libraries() -> None:
    """Keeps library INFO lines out of the console: those logged through absl's "absl" logger
    and, at absl's handler, those of Python loggers (JAX's)."""
    for target in (py_logging.getLogger("absl"), logging.get_absl_handler()):
        if not any(isinstance(f, LibraryInfoFilter) for f in target.filters):
            target.addFilter(LibraryInfoFilter())


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """An entry point's imports, with the garbage collector off, then every object alive moved
    out of its sight (`gc.freeze`). Imports create millions of objects (TensorFlow's, JAX's)
    that never become garbage: collecting while they pile up took 0.8 s of the demo's 3.9 s
    start-up, and without them the interpreter's last collection at exit takes 0.3 s, not 1.5."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def run(
    main: Callable[[list[str]], object],
    module_name: str,
    doc: str | None,
    define_flags: Callable[[], None] | None = None,
    extra_key_flags: tuple[str, ...] = (),
    first: Callable[[], None] | None = None,
    uses_jax: bool = True,
    imports: tuple[str, ...] = (),
) -> None:
    """Defines the flags, makes `--help` show `doc` and the module's flags, runs `main`.

    `first` runs once the flags are parsed, before the console and JAX's compilation cache are
    set up: checks that should fail fast, such as main's preflight. `uses_jax=False` leaves
    JAX unimported (the report). `imports`: the modules `main` imports (after the flags, to
    answer --help fast), imported before it within `importing`."""
    if define_flags is not None:
        define_flags()
    if "library_logs" not in flags.FLAGS:
        flags.DEFINE_bool("library_logs", False, "Show the INFO lines of Orbax, TFDS, etils.")
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool(
            "verbose",
            False,
            "Show everything: the libraries' INFO lines (as --library_logs), clu's raw metric "
            "lines and the parameter table (also -v 1 for the last two).",
        )
    main_module = sys.modules["__main__"]
    main_module.__doc__ = main_module.__doc__ or doc
    key_flags = [*flags.FLAGS.get_key_flags_for_module(module_name)]
    key_flags += [flags.FLAGS[name] for name in (*extra_key_flags, "verbose", "library_logs")]
    for flag in key_flags:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def main_with_quiet_libraries(argv: list[str]) -> object:
        if not (flags.FLAGS.library_logs or flags.FLAGS.verbose):
            quiet_libraries()
        with importing():
            if first is not None:
                first()
            from richft_jax import compile_cache, console  # noqa: PLC0415  (after `first`)

            console.set_verbose(flags.FLAGS.verbose)
            if uses_jax:
                compile_cache.enable()
            for name in imports:
                importlib.import_module(name)
        return main(argv)

    app.run(main_with_quiet_libraries)


def refuse_arguments(argv: Sequence[str]) -> None:
    """Raises absl's UsageError (usage, exit 1) for positional arguments: commands whose every
    input is a --flag say so rather than ignore a mistyped flag."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}: every input is a --flag.")


def run_flags(
    act: Callable[[flags.FlagValues], object],
    module_name: str,
    doc: str | None,
    define_flags: Callable[[], None] | None = None,
    **run_kwargs: Any,
) -> None:
    """`run` for a command whose every input is a flag: its main refuses positional arguments
    and calls `act(flags.FLAGS)`, the same function tests call with their own FlagValues.

    `act`'s return value (a record, for tests) is dropped: app.run would exit with it."""

    def main(argv: list[str]) -> None:
        refuse_arguments(argv)
        act(flags.FLAGS)

    run(main, module_name, doc, define_flags, **run_kwargs)
