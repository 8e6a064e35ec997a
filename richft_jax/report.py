"""Collects finished runs into DomainBed-style tables and the paper's ID-vs-OOD picture.

  python -m richft_jax.report DIR... [--out=OUT_DIR]    (or: richft-report DIR... [--out=OUT_DIR])

Reads every results.jsonl under the given directories (numbers are never copied by hand).
Model selection follows DomainBed's collect_results:
- training-domain validation: per run, the step with the best mean out-split accuracy of the
  training domains; per (method, test domains, trial seed), the run (hyper-parameters) with the
  best such score; reported: the test domain's in split at that step;
- oracle: per run, the last step; per (method, test domains, trial seed), the run with the best
  test-domain out-split accuracy; reported: the test domain's in split.
Cells are mean ± standard error over trial seeds, "X" where runs are missing. Writes
tables.md, results.csv and id_vs_ood.png into --out when given.
"""

import collections
import csv
import dataclasses
import math
import pathlib

from absl import app, flags

from richft_jax import cli, results

SELECTIONS = ("training_domain_validation", "oracle")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run's (or one of its methods') selected numbers under both selection rules."""

    path: str
    dataset: str
    method: str
    test_domains: str
    trial_seed: int
    scores: dict  # selection -> (selection score, ood accuracy, id accuracy)
    domains: tuple[str, ...] = ()  # The dataset's domains, in the order its rows list them.


def run_records(paths: list[str]) -> list[RunRecord]:
    """One record per (results file, method) found under `paths`."""
    records = []
    files = []
    for p in map(pathlib.Path, paths):
        files += [p] if p.is_file() else sorted(p.rglob(results.RESULTS))
    for f in files:
        by_method = collections.defaultdict(list)
        for r in results.read_rows(f):
            by_method[r["method"]].append(r)
        for method, rows in by_method.items():
            selection = results.select_training_domain_validation(rows)
            best, last = selection["selected"], selection["last"]
            records.append(
                RunRecord(
                    path=str(f.parent),
                    dataset=rows[0].get("dataset", "?"),
                    method=method,
                    test_domains=",".join(rows[0]["test_domains"]),
                    trial_seed=rows[0]["trial_seed"],
                    domains=tuple(dict.fromkeys(r["domain"] for r in rows)),
                    scores={
                        "training_domain_validation": (
                            best["id_accuracy"],
                            best["ood_accuracy"],
                            best["id_accuracy"],
                        ),
                        "oracle": (
                            last["ood_out_accuracy"],
                            last["ood_accuracy"],
                            last["id_accuracy"],
                        ),
                    },
                )
            )
    return records


def mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error (std with n-1, over sqrt(n)); SE is 0 for a single value."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def aggregate(records: list[RunRecord], selection: str) -> dict:
    """{(dataset, method, test_domains): {"ood": [per trial seed], "id": [...]}} after picking,
    per trial seed, the run with the best selection score."""
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r.dataset, r.method, r.test_domains, r.trial_seed)].append(r)
    out = collections.defaultdict(lambda: {"ood": [], "id": []})
    for (dataset, method, test, _), runs in sorted(groups.items()):
        best = max(runs, key=lambda r: r.scores[selection][0])
        out[(dataset, method, test)]["ood"].append(best.scores[selection][1])
        out[(dataset, method, test)]["id"].append(best.scores[selection][2])
    return out


def _cell(xs: list[float] | None) -> str:
    if not xs:
        return "X"
    m, se = mean_se(xs)
    return f"{100 * m:.1f} ± {100 * se:.1f}"


def _domain_order(records: list[RunRecord], dataset: str, tested: set[str]) -> list[str]:
    """Test-domain columns in the dataset's own domain order (as DomainBed prints them): the
    order its results rows list the domains in. Every single domain gets a column, tested or
    not, so a missing one shows as "X" (and the average as "X") instead of vanishing."""
    rank = {}
    for r in records:
        if r.dataset == dataset:
            for d in r.domains:
                rank.setdefault(d, len(rank))
    columns = set(tested) | set(rank)
    return sorted(columns, key=lambda t: ([rank.get(d, len(rank)) for d in t.split(",")], t))


def markdown(records: list[RunRecord]) -> str:
    """DomainBed-style tables: per dataset and selection, methods × test domains + Avg."""
    out = []
    for selection in SELECTIONS:
        agg = aggregate(records, selection)
        datasets = sorted({k[0] for k in agg})
        averages = {}
        for dataset in datasets:
            methods = sorted({k[1] for k in agg if k[0] == dataset})
            domains = _domain_order(records, dataset, {k[2] for k in agg if k[0] == dataset})
            lines = [
                f"**{dataset}, {selection}** (OOD accuracy: test domain, in split)\n",
                "| method | " + " | ".join(domains) + " | Avg |",
                "|---" * (len(domains) + 2) + "|",
            ]
            for method in methods:
                cells, means = [], []
                for d in domains:
                    xs = agg.get((dataset, method, d), {}).get("ood")
                    cells.append(_cell(xs))
                    if xs:
                        means.append(sum(xs) / len(xs))
                avg = sum(means) / len(means) if len(means) == len(domains) else None
                averages[(method, dataset)] = avg
                avg_text = "X" if avg is None else f"{100 * avg:.1f}"
                lines.append(f"| {method} | " + " | ".join(cells) + f" | {avg_text} |")
            out.append("\n".join(lines))
        methods = sorted({m for m, _ in averages})
        lines = [
            f"**Averages, {selection}**\n",
            "| method | " + " | ".join(datasets) + " | Avg |",
            "|---" * (len(datasets) + 2) + "|",
        ]
        for method in methods:
            vals = [averages.get((method, d)) for d in datasets]
            text = ["X" if v is None else f"{100 * v:.1f}" for v in vals]
            avg = "X" if None in vals else f"{100 * sum(vals) / len(vals):.1f}"
            lines.append(f"| {method} | " + " | ".join(text) + f" | {avg} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def write_csv(records: list[RunRecord], path: pathlib.Path) -> None:
    """Long-format CSV: one row per (selection, dataset, method, test domains)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "selection",
                "dataset",
                "method",
                "test_domains",
                "n_seeds",
                "ood_mean",
                "ood_se",
                "id_mean",
                "id_se",
            ]
        )
        for selection in SELECTIONS:
            for (dataset, method, test), v in sorted(aggregate(records, selection).items()):
                w.writerow(
                    [
                        selection,
                        dataset,
                        method,
                        test,
                        len(v["ood"]),
                        *mean_se(v["ood"]),
                        *mean_se(v["id"]),
                    ]
                )


def plot_id_vs_ood(records: list[RunRecord], path: pathlib.Path) -> None:
    """The paper's picture: ID (x) against OOD (y) accuracy per method, averaged over test
    domains (training-domain validation), one point per method and test domain plus the mean."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    agg = aggregate(records, "training_domain_validation")
    fig, ax = plt.subplots(figsize=(5, 4))
    for method in sorted({k[1] for k in agg}):
        pts = [
            (sum(v["id"]) / len(v["id"]), sum(v["ood"]) / len(v["ood"]))
            for k, v in agg.items()
            if k[1] == method
        ]
        xs, ys = zip(*pts, strict=True)
        line = ax.scatter(xs, ys, alpha=0.35, s=15)
        ax.scatter(
            [sum(xs) / len(xs)],
            [sum(ys) / len(ys)],
            color=line.get_facecolor()[0],
            s=60,
            edgecolor="black",
            label=method,
        )
    ax.set_xlabel("ID accuracy (training domains, out splits)")
    ax.set_ylabel("OOD accuracy (test domain, in split)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(dirs: list[str], out: str | None = None) -> str:
    """The tables of every run under `dirs` (markdown), also written with results.csv and
    id_vs_ood.png into `out` when given: the command line's work, callable without it."""
    records = run_records(dirs)
    if not records:
        raise FileNotFoundError(f"No {results.RESULTS} under {dirs}.")
    text = markdown(records)
    if out:
        out_dir = pathlib.Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tables.md").write_text(text, encoding="utf-8")
        write_csv(records, out_dir / "results.csv")
        plot_id_vs_ood(records, out_dir / "id_vs_ood.png")
    return text


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this command line's flags in `flag_values` when it starts, not at import: the
    entry points share flag names (--out), and tests import several of them into one process."""
    help_ = "Directory for tables.md, results.csv and id_vs_ood.png."
    flags.DEFINE_string("out", None, help_, flag_values=flag_values)


def main(argv: list[str]) -> None:
    """Prints (and with --out writes) the tables of the runs under the positional DIRs."""
    if len(argv) < 2:
        raise app.UsageError("Give one or more run directories (or their parents).")
    try:
        print(write_report(argv[1:], flags.FLAGS.out))
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


def run() -> None:
    """The `richft-report` console script: same as `python -m richft_jax.report`."""
    cli.run(main, __name__, __doc__, define_flags)


if __name__ == "__main__":
    run()
