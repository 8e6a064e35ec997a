"""The one path layer: every path a user gives (workdir, run directories, weights, data
directories) becomes an `etils.epath.Path`, so a local disk and a bucket (gs://, s3://) take
the same code, the one Orbax and TFDS already use.

A URL is never reinterpreted as a local folder (`gs://b/x` never becomes `./gs:/b/x`), and a
URL whose scheme is not a storage system (https://, for instance) is refused naming the input.
Where a run's latest finished checkpoint is (`latest_step_dir`) is read here too, by Orbax's
rules without Orbax. Imports nothing heavy (no JAX, no TensorFlow): the preflight uses it
before the run starts.
"""

import errno
import os

from etils import epath

# The storage schemes epath reads and writes (etils.epath.gpath); others are refused.
STORAGE_SCHEMES = ("gs", "s3", "az")


def scheme(value: str | os.PathLike) -> str | None:
    """The URL scheme of `value` ("gs" for gs://bucket/x), or None for a local path."""
    text = os.fspath(value)
    return text.split("://", 1)[0] if "://" in text else None


def is_remote(value: str | os.PathLike) -> bool:
    """Whether `value` names an object store (gs://...) rather than the local file system."""
    return scheme(value) is not None


def path(value: str | os.PathLike, what: str = "path") -> epath.Path:
    """`value` as an epath: a storage URL as is, a local path with ~ expanded and made absolute
    (Orbax takes absolute paths only). `what` names the input (a flag or config key) in errors."""
    text = os.fspath(value)
    if not text:
        raise ValueError(f"{what} is empty: give a local path or a gs:// URL.")
    found = scheme(text)
    if found is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if found not in STORAGE_SCHEMES:
        supported = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
        raise ValueError(
            f"{what}={text!r}: {found}:// is not a storage system paths can be read from or "
            f"written to (supported: a local path, {supported}); download the file first and "
            "pass its path."
        )
    return epath.Path(text)


GLOB_CHARACTERS = frozenset("*?[")


def has_glob(value: str | os.PathLike) -> bool:
    """Whether `value` holds a glob pattern (*, ?, [...])."""
    return not GLOB_CHARACTERS.isdisjoint(os.fspath(value))


def expand(value: str | os.PathLike, what: str = "path") -> list[epath.Path]:
    """`value` as paths (`path`): itself, or the existing paths its glob pattern (*, ?, [...])
    matches, sorted; a gs:// pattern has no shell to expand it (** is refused there: epath
    lists one level per *)."""
    target = path(value, what)
    if not has_glob(target):
        return [target]
    base = next(p for p in target.parents if not has_glob(p))
    return sorted(base.glob(os.fspath(target.relative_to(base))))


def make_dirs(value: str | os.PathLike, what: str = "path") -> epath.Path:
    """The folder `value` (`path`), created with its parents when local; nothing is created on
    a bucket, which has no folders (an object's name holds the slashes)."""
    target = path(value, what)
    if not is_remote(target):
        target.mkdir(parents=True, exist_ok=True)
    return target


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Writes `text` so that readers see the old or the new content, never half: a temporary
    file and a rename on a local disk; one object upload on a bucket (uploads are atomic there,
    and renames are copies)."""
    target = path(target)
    if is_remote(target):
        target.write_text(text, encoding="utf-8")
        return
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def unwritable(workdir: str) -> str | None:
    """Why a run could not create and write `workdir`, or None; only looks, creates nothing.
    Locally the workdir, or else its nearest existing ancestor, must be a directory this
    process can write into; a bucket URL is checked by the run's first write (a probe here
    would need the network)."""
    if is_remote(workdir):
        try:
            path(workdir, "--workdir")
        except ValueError as e:
            return str(e)
        return None
    target = path(workdir)
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        why = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        why = f"{existing}: {os.strerror(errno.EROFS if read_only else errno.EACCES)}"
    else:
        return None
    return f"workdir {str(target)!r} is not writable: {why}"


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINTS = "checkpoints"  # A run's checkpoint manager directory (checkpoints.LATEST).
ORBAX_TMP = ".orbax-checkpoint-tmp"  # In the name of a step directory Orbax is still writing.
_COMMIT_FILE = "commit_success.txt"  # Orbax on gs://: the step directory is complete.


def finished_step_dirs(directory: epath.Path) -> dict[int, epath.Path]:
    """{step: its directory} of the finished Orbax checkpoints in a manager directory, as
    Orbax's `utils.checkpoint_steps` finds them (step directories `N` or `NAME_N`, none still
    being written; on gs://, those with their commit file), without importing Orbax."""
    found = {}
    for step_dir in directory.iterdir():
        name = step_dir.name
        number = name if name.isdigit() else name.split("_")[-1]
        if not (number.isdigit() and step_dir.is_dir()) or ORBAX_TMP in name:
            continue
        if scheme(directory) != "gs" or (step_dir / _COMMIT_FILE).exists():
            found[int(number)] = step_dir
    return found


def latest_step_dir(directory: str | os.PathLike) -> epath.Path:
    """The latest finished checkpoint under a run's workdir or manager dir (or the step dir
    itself when given one); local or gs://."""
    directory = path(directory, "checkpoint directory")
    if (directory / "state").is_dir():
        return directory
    for candidate in (directory / CHECKPOINTS, directory):
        if candidate.is_dir() and (steps := finished_step_dirs(candidate)):
            return steps[max(steps)]
    raise FileNotFoundError(
        f"No finished Orbax checkpoint under {directory} "
        f"(expected {directory / CHECKPOINTS}/<step>)."
    )
