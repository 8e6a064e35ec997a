"""Prints what sitecustomize.py recorded for a test-suite run: per test file, its subprocesses
(how many, how many imported TensorFlow, the seconds they lived) and the JAX compile and
cache-load seconds of the workers and subprocesses.

    python -m benchmarks.suite_accounting.summarize DIR
"""

import collections
import json
import pathlib
import sys

COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)
SAVED = "/jax/compilation_cache/compile_time_saved_sec"
LOAD = "/jax/compilation_cache/cache_retrieval_time_sec"


def summarize(records: list[dict]) -> str:
    """A markdown table, slowest files first, and the totals."""
    per = collections.defaultdict(collections.Counter)
    for r in records:
        if r["test"]:  # A process a test started (the xdist workers have no test at exit).
            row = per[r["test"].split("::")[0]]
            row.update(processes=1, process_s=r["seconds"], tensorflow=int(r["tensorflow"]))
        for key, seconds in r["events"].items():
            test, event = key.split("|", 1)
            row = per[test.split("::")[0] or "(collection)"]
            row["compile_s"] += seconds if event == COMPILE else 0
            row["trace_lower_s"] += seconds if event in TRACE else 0
            row["cache_saved_s"] += seconds if event == SAVED else 0
            row["cache_load_s"] += seconds if event == LOAD else 0
            row["compiles"] += seconds if event == COMPILE + "#n" else 0
            row["under_floor_s"] += seconds if event == COMPILE + "#under_floor" else 0
    cols = ("processes", "tensorflow", "process_s", "compile_s", "compiles", "under_floor_s")
    cols += ("trace_lower_s", "cache_load_s", "cache_saved_s")
    lines = ["| file | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    order = sorted(per, key=lambda f: -(per[f]["process_s"] + per[f]["compile_s"]))
    total = sum((per[f] for f in per), collections.Counter())
    for name, row in [*((f, per[f]) for f in order), ("total", total)]:
        lines.append(f"| {name} | " + " | ".join(str(round(row[c]) + 0) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("Usage: python -m benchmarks.suite_accounting.summarize DIR")
    path = pathlib.Path(argv[1]) / "processes.jsonl"
    if not path.exists():
        raise SystemExit(f"No {path}: run the suite with RICHFT_SUITE_ACCOUNTING={argv[1]}.")
    print(summarize([json.loads(line) for line in path.read_text().splitlines()]))


if __name__ == "__main__":
    main(sys.argv)
