"""Collects finished runs into DomainBed-style tables: `python -m richft_jax.report DIR...`.

Reads each run's results.jsonl (not hand-copied numbers), applies training-domain-validation
model selection per run, and prints one markdown table per quantity: rows = methods, columns
= test domains + Avg, cells = mean ± standard error over seeds.
"""

import collections
import math
import pathlib
import sys

from richft_jax import results


def find_runs(paths: list[str]) -> list[pathlib.Path]:
    """Every directory under `paths` that holds a results.jsonl."""
    runs = []
    for p in map(pathlib.Path, paths):
        runs += sorted(f.parent for f in p.rglob(results.RESULTS))
    return runs


def mean_se(xs: list[float]) -> str:
    """'mean ± standard error' in percent (± omitted for one value)."""
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{100 * m:.1f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{100 * m:.1f} ± {100 * sd / math.sqrt(len(xs)):.1f}"


def tables(paths: list[str], keys=("ood_accuracy", "id_accuracy")) -> str:
    """Markdown tables of the selected step's numbers, one per key."""
    cells = collections.defaultdict(list)  # (key, method, test domain) -> values over seeds
    methods, domains = {}, {}
    for run in find_runs(paths):
        rows = results.read_rows(run)
        if not rows:
            continue
        selected = results.select_training_domain_validation(rows)["selected"]
        method = f"{rows[0]['method']} (p={rows[0]['dropout_rate']:g})"
        test = ",".join(rows[0]["test_domains"])
        methods[method] = None
        domains[test] = None
        for key in keys:
            cells[(key, method, test)].append(selected[key])
    out = []
    for key in keys:
        header = ["method", *domains, "Avg"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            row = [method]
            means = []
            for d in domains:
                xs = cells.get((key, method, d))
                row.append(mean_se(xs) if xs else "X")
                if xs:
                    means.append(sum(xs) / len(xs))
            row.append(
                f"{100 * sum(means) / len(means):.1f}" if len(means) == len(domains) else "X"
            )
            lines.append("| " + " | ".join(row) + " |")
        out.append(f"**{key}** (training-domain validation)\n\n" + "\n".join(lines))
    return "\n\n".join(out)


if __name__ == "__main__":
    print(tables(sys.argv[1:]))
