"""The one way an entry point starts: absl flags defined when it starts, its doc and key flags
in --help, then `app.run(main)`.

Flags are defined at start, not at import, because entry points share flag names (--out) and
tests import several of them into one process.
"""

import sys
from collections.abc import Callable

from absl import app, flags


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
    main_module = sys.modules["__main__"]
    main_module.__doc__ = main_module.__doc__ or doc
    key_flags = [*flags.FLAGS.get_key_flags_for_module(module_name)]
    key_flags += [flags.FLAGS[name] for name in extra_key_flags]
    for flag in key_flags:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
