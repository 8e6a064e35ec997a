"""The code's shape, read from source only (AST and git; no JAX): the package's import graph
has no cycle, no function is longer than a screenful or two, and nothing tracked points at
files outside the repository.

Each checker is a small pure function over source strings, tested here on synthetic inputs
(positive and negative cases) before it is run on the repository itself.
"""

import ast
import pathlib
import re
import subprocess
from collections.abc import Iterable, Mapping

import pytest
from conftest import parse_python

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "richft_jax"
MAX_FUNCTION_LINES = 100


# ----------------------------------------------------------------------------- import graph
def package_sources(root: pathlib.Path, package: str) -> dict[str, tuple[str, bool]]:
    """`{module name: (source, is_package)}` of every .py file of `package` under `root`."""
    sources = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        sources[".".join(parts)] = (path.read_text(encoding="utf-8"), is_package)
    return sources


def _resolve(name: str, modules: Iterable[str]) -> str | None:
    """`name` if it is a known module, else its longest known prefix (None if none is)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _from_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def imported_modules(module: str, source: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of `modules` that `module` imports anywhere (module level, in functions,
    under `if`): `import a.b` -> a.b; `from a import b` -> a.b if it is a module, else a;
    relative imports resolved; `importlib.import_module("a.b")` with a literal too. A parent
    package is not implied by importing its submodule (that is how the convention counts)."""
    edges = set()
    for node in ast.walk(parse_python(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                edges.add(resolved)
    return edges


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """`{module: modules it imports}` over `sources` (see `package_sources`)."""
    modules = set(sources)
    return {m: imported_modules(m, src, pkg, modules) for m, (src, pkg) in sources.items()}


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _cycle_through(start: str, graph: Mapping[str, set[str]], members: set[str]) -> list[str]:
    """A shortest cycle start -> ... -> start inside `members` (breadth-first)."""
    parent = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
            if child in members and child not in parent:
                parent[child] = node
                queue.append(child)
    return [start]


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (first module repeated at the end) per strongly connected
    component of more than one module; [] when the graph is acyclic."""
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            cycles.append(_cycle_through(component[0], graph, set(component)))
    return sorted(cycles)


def _graph(**modules: str) -> dict[str, set[str]]:
    """The import graph of synthetic modules `pkg_a="source"` (`__` spells a dot; a name
    ending in `__init` is a package)."""
    sources = {}
    for name, source in modules.items():
        dotted = name.replace("__", ".")
        is_package = dotted.endswith(".init")
        sources[dotted.removesuffix(".init")] = (source, is_package)
    return import_graph(sources)


def test_import_graph_edges():
    graph = _graph(
        p__init="from p.sub import x\n",
        p__a="import p.b\nfrom p import c\nfrom p import VERSION\n",
        p__b="def f():\n    from .c import thing\n    return thing\n",
        p__c="from . import a\nfrom .. import outside\nimport numpy\n",
        p__sub__init="from . import deep\nfrom .deep import y\n",
        p__sub__deep="import importlib\nm = importlib.import_module('p.a')\nimport p.sub.deep\n",
    )
    assert graph == {
        "p": {"p.sub"},
        "p.a": {"p.b", "p.c", "p"},
        "p.b": {"p.c"},  # An import inside a function counts.
        "p.c": {"p.a"},  # `..` from p.c leaves the package: no edge; numpy is not ours.
        "p.sub": {"p.sub.deep"},
        "p.sub.deep": {"p.a"},  # Its own name is no edge.
    }


def test_import_cycles_found_and_printed():
    assert import_cycles(_graph(p__a="import p.b\n", p__b="x = 1\n")) == []
    assert import_cycles(_graph(p__a="import p.b\n", p__b="def f():\n    import p.a\n")) == [
        ["p.a", "p.b", "p.a"]
    ]
    three = _graph(
        p__a="from p import b\n", p__b="from .c import z\n", p__c="import p.a\n", p__d="import p.a"
    )
    assert import_cycles(three) == [["p.a", "p.b", "p.c", "p.a"]]
    two = import_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "a"}})
    assert two == [["a", "b", "a"], ["c", "d", "c"]]


def test_no_import_cycle_in_the_package():
    cycles = import_cycles(import_graph(package_sources(REPO, PACKAGE)))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# ----------------------------------------------------------------------------- function length
def long_functions(source: str, filename: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`file:line qualified.name (N lines)` of every function or method longer than `limit`
    lines, from its `def` line (decorators excluded) to its last line."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append(f"{filename}:{child.lineno} {name[:-1]} ({length} lines)")
            visit(child, name)

    visit(parse_python(source), "")
    return found


def _function(name: str, body_lines: int, indent: str = "") -> str:
    return f"{indent}def {name}():\n" + f"{indent}    x = 1\n" * body_lines


def test_long_functions_counts_def_to_last_line_without_decorators():
    ok = "@decorator\n@another(1)\n" + _function("f", 4)  # 5 lines: def + 4.
    assert long_functions(ok, "m.py", limit=5) == []
    assert long_functions(ok, "m.py", limit=4) == ["m.py:3 f (5 lines)"]
    nested = (
        "class C:\n"
        + _function("short", 1, "    ")
        + "    @staticmethod\n"
        + _function("method", 6, "    ")
        + "async def outer():\n"
        + _function("inner", 6, "    ")
    )
    assert long_functions(nested, "m.py", limit=6) == [
        "m.py:5 C.method (7 lines)",
        "m.py:12 outer (8 lines)",
        "m.py:13 outer.inner (7 lines)",
    ]


def test_no_function_longer_than_the_limit():
    offenders = []
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        offenders += long_functions(path.read_text(encoding="utf-8"), rel)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


# ----------------------------------------------------------------------------- outside paths
# Spelled in pieces so this file does not match itself.
_OUTSIDE = re.compile(r"\.\./" + "shared" + r"|(?<![\w.~$})-])/" + "work" + r"/")
_CHECKED_SUFFIXES = (".py", ".md", ".toml", ".sh", ".ipynb", ".sbatch")


def outside_references(text: str, filename: str) -> list[str]:
    """`file:line: text` of each line that points outside the repository: into the sibling
    `shared` checkout (`..` then `/shared`) or at an absolute path under `/` `work`."""
    return [
        f"{filename}:{i}: {line.strip()[:160]}"
        for i, line in enumerate(text.splitlines(), 1)
        if _OUTSIDE.search(line)
    ]


def checked_files(tracked: Iterable[str]) -> list[str]:
    """The tracked text files whose contents must stay inside the repository."""
    return [f for f in tracked if f.endswith(_CHECKED_SUFFIXES) or f.startswith(".ci/")]


def test_outside_references_positive_and_negative():
    up, root = "..", "/"
    bad = [
        f"sys.path.insert(0, '{up}/shared/lib')",
        f"see {up}/{up}/shared/data.csv",
        f"cd {root}work/main && make",
        f'"path": "{root}work/x"',
    ]
    good = [
        "./shared/data and shared/ are the repository's own folder",
        "homework/ and network/ are words",
        "runs/work/ is relative",
        "$HOME/work/ and ~/work/ are the user's own",
        "/workspace/ and /works/ are other roots",
    ]
    text = "\n".join([*bad, *good])
    assert outside_references(text, "f.md") == [f"f.md:{i}: {b}" for i, b in enumerate(bad, 1)]
    tracked = ["a.py", "b.md", "c.toml", "d.sh", "e.ipynb", "f.sbatch", ".ci/run", "g.json", "h"]
    assert checked_files(tracked) == tracked[:7]


def test_nothing_tracked_refers_outside_the_repository():
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e})")
    found = []
    for rel in checked_files(filter(None, listing.split("\0"))):
        path = REPO / rel
        if path.is_file():  # Tracked but deleted in the work tree: nothing to read.
            found += outside_references(path.read_text(encoding="utf-8", errors="replace"), rel)
    assert not found, "references outside the repository:\n" + "\n".join(found)
