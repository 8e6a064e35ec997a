"""The one way an entry point starts: absl flags defined when it starts, its doc and key flags
in --help, then `app.run(main)`.

Flags are defined at start, not at import, because entry points share flag names (--out) and
tests import several of them into one process.
"""

import logging as py_logging
import sys
from collections.abc import Callable

from absl import app, flags

from richft_jax import compile_cache

# Libraries whose INFO lines (hundreds per run: every Orbax save and restore step, TFDS's
# builder chatter) bury the run's own; their warnings and errors still show.
QUIET_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/etils/")


class LibraryInfoFilter(py_logging.Filter):
    """Drops records below WARNING logged from the files of `QUIET_LIBRARIES`."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return record.levelno >= py_logging.WARNING or not any(q in path for q in QUIET_LIBRARIES)


def quiet_libraries() -> None:
    """Keeps library INFO lines out of the console (absl logs them through its "absl" logger)."""
    logger = py_logging.getLogger("absl")
    if not any(isinstance(f, LibraryInfoFilter) for f in logger.filters):
        logger.addFilter(LibraryInfoFilter())


def run(
    main: Callable[[list[str]], object],
    module_name: str,
    doc: str | None,
    define_flags: Callable[[], None] | None = None,
    extra_key_flags: tuple[str, ...] = (),
) -> None:
    """Defines the flags, makes `--help` show `doc` and the module's flags, runs `main`."""
    if define_flags is not None:
        define_flags()
    if "library_logs" not in flags.FLAGS:
        flags.DEFINE_bool("library_logs", False, "Show the INFO lines of Orbax, TFDS, etils.")
    main_module = sys.modules["__main__"]
    main_module.__doc__ = main_module.__doc__ or doc
    key_flags = [*flags.FLAGS.get_key_flags_for_module(module_name)]
    key_flags += [flags.FLAGS[name] for name in extra_key_flags]
    for flag in key_flags:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def main_with_quiet_libraries(argv: list[str]) -> object:
        if not flags.FLAGS.library_logs:
            quiet_libraries()
        compile_cache.enable()
        return main(argv)

    app.run(main_with_quiet_libraries)
