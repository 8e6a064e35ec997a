"""A stand-in for a new Colab runtime, built in seconds: a fresh virtual environment whose only
packages are the ones Colab ships, taken from this (the test) environment without copying them.

`python -m venv --without-pip` makes an environment with nothing installed. One `.pth` line in
its site-packages adds a directory holding symlinks to the shipped distributions' files and
`.dist-info` folders (found through their RECORD), so the runtime imports them and pip counts
them as installed, as Colab's dist-packages. Nothing else of the test environment is reachable:
richft_jax's editable finder, the packages Colab lacks, and the other distributions' files in a
folder they share with a shipped one (`google/` holds protobuf and the Google Cloud clients:
only `google/protobuf` is linked). `.pth` files inside the linked directory are not processed
(a `.pth` line adds a path, not a site directory), so none of them leaks in either.

pip itself is one of the shipped distributions (Colab ships it, and `venv`'s ensurepip costs
seconds); it installs into the fresh environment's own site-packages, which comes first on
sys.path: a shipped distribution pip reinstalled or upgraded would shadow the linked one, and
its location would say so. pip never removes a linked one, which lies outside the environment's
prefix (pip does not uninstall outside sys.prefix), so the test environment is never written.
"""

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig

from packaging.requirements import Requirement

SITE = pathlib.Path(sysconfig.get_paths()["purelib"])  # This environment's site-packages.


def canonical(name: str) -> str:
    """A distribution name normalised as pip compares them ("ML_Collections" -> ...)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions() -> dict[str, importlib.metadata.Distribution]:
    """This environment's site-packages distributions, by canonical name."""
    found = importlib.metadata.distributions(path=[str(SITE)])
    return {canonical(d.metadata["Name"]): d for d in found}


def closure(roots) -> set[str]:
    """`roots` and every distribution they require (no extras), as installed here."""
    dists, seen, todo = _distributions(), set(), [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in dists:
            raise LookupError(f"{name}: not installed in {SITE} (needed by the Colab stand-in).")
        seen.add(name)
        for r in dists[name].requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return seen


def _tree() -> tuple[dict, dict]:
    """The files under site-packages that a RECORD lists, as two maps over their folders (path
    parts): folder -> distributions with a file under it, folder -> its entries."""
    owners, entries = {}, {}
    for name, dist in _distributions().items():
        for f in dist.files or []:
            if not f.parts or f.parts[0] == "..":  # The scripts in bin/.
                continue
            for i in range(len(f.parts) + 1):
                owners.setdefault(f.parts[:i], set()).add(name)
                if i < len(f.parts):
                    entries.setdefault(f.parts[:i], set()).add(f.parts[i])
    return owners, entries


def link_distributions(names: set[str], into: pathlib.Path) -> int:
    """Symlinks in `into` to the files of distributions `names` (site-packages layout): a whole
    folder where every recorded file in it belongs to them, else its entries one by one.
    Returns the number of links."""
    owners, entries = _tree()
    count = 0

    def link(folder: tuple[str, ...]) -> None:
        nonlocal count
        for entry in sorted(entries.get(folder, ())):
            path = (*folder, entry)
            if not owners[path] & names:
                continue
            target = SITE.joinpath(*path)
            if not target.exists():
                continue  # Listed but absent (a .pyc never written).
            if owners[path] <= names:
                into.joinpath(*path).symlink_to(target, target.is_dir())
                count += 1
            else:  # Shared with a distribution left out (a namespace folder): go down.
                into.joinpath(*path).mkdir()
                link(path)

    into.mkdir(parents=True)
    link(())
    return count


def create(root: pathlib.Path, ships) -> pathlib.Path:
    """A fresh environment in `root`/venv with the distributions `ships` and all they require,
    linked from `root`/dist-packages. Returns its Python interpreter."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shipped = root / "dist-packages"
    link_distributions(closure(ships), shipped)
    pathlib.Path(purelib, "colab_ships.pth").write_text(f"{shipped}\n")
    return python


def inventory(python: os.PathLike) -> dict[str, tuple[str, str]]:
    """Each distribution `python` sees: canonical name -> (version, folder it is installed in)."""
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps([[d.metadata['Name'], d.version, str(d.locate_file(''))]"
        " for d in m.distributions()]))"
    )
    # From the venv's bin/: a folder in the working directory (an .egg-info) is no distribution.
    run = [python, "-c", code]
    out = subprocess.run(run, cwd=pathlib.Path(python).parent, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)

    found = {}
    for name, version, where in json.loads(out.stdout):
        found.setdefault(canonical(name), (version, where))  # First on sys.path: what imports.
    return found
