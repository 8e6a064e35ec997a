"""Collects finished runs into DomainBed-style tables and the paper's ID-vs-OOD picture.

  python -m richft_jax.report DIR... [--out=OUT_DIR] [--error_bar=domainbed|sample]
  (or: richft-report DIR... [--out=OUT_DIR] [--error_bar=...])

Reads every results.jsonl under the given directories (numbers are never copied by hand).
Computed as DomainBed's domainbed/scripts/collect_results.py and model_selection.py compute
them:
- training-domain validation: per run, the step with the best mean out-split accuracy of the
  training domains (the earliest on ties); per (method, test domains, trial seed), the run
  (hyper-parameters) with the best such score; reported: the test domain's in split at that step;
- oracle: per run, the last step; per (method, test domains, trial seed), the run with the best
  test-domain out-split accuracy; reported: the test domain's in split;
- ties between runs of one group: DomainBed sorts the runs by ascending hparams_seed, then
  stably by validation score (NaN lowest) and reverses, so the LAST tied run wins. Our runs
  have no hparams_seed: their order is the order they are read (the DIR arguments in turn,
  each one's results.jsonl files sorted by path, methods in their first row's order);
- cells: mean ± error bar over trial seeds; by default DomainBed's format_mean,
  np.std(x / sqrt(n)) (divisor n), or with --error_bar=sample the sample standard error
  (divisor n − 1). "X" where runs are missing; a cell with one seed shows its mean alone
  (DomainBed prints "± 0.0" there); a "seeds" column gives the row's trial seeds, and a cell
  with fewer says "(n=…)"; a line under every table names the error bar;
- Avg of a dataset table: the mean of its columns' means, no ± ("X" if a column is empty);
- averages table: per (method, dataset), per trial seed the mean over the test domains that
  seed has (DomainBed does not require all of them: such cells are marked "†"), then mean ±
  error bar over the seeds; its Avg is the mean over datasets, no ±.
Writes tables.md, results.csv and id_vs_ood.png into --out when given.
"""

import collections
import csv
import dataclasses
import math
import pathlib

import numpy as np
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


ERROR_BARS = {
    "domainbed": "± = DomainBed's standard error (std with divisor n over seeds / √n)",
    "sample": "± = sample standard error (std with divisor n − 1 over seeds / √n)",
}
ONE_SEED = "a cell with one seed shows its mean alone (DomainBed prints ± 0.0 there)"


def mean_se(xs: list[float], error_bar: str = "domainbed") -> tuple[float, float]:
    """Mean and error bar of `xs`: DomainBed's format_mean, np.std(x / sqrt(n)) with divisor n
    ("domainbed", 0 for one value), or the sample standard error ("sample", NaN for one)."""
    a = np.asarray(xs, dtype=float)
    if error_bar == "domainbed":
        return float(np.mean(a)), float(np.std(a / np.sqrt(len(a))))
    if error_bar == "sample":
        se = float(np.std(a, ddof=1) / np.sqrt(len(a))) if len(a) > 1 else math.nan
        return float(np.mean(a)), se
    raise ValueError(f"error_bar={error_bar!r}: not one of {sorted(ERROR_BARS)}.")


def _validation_key(record: RunRecord, selection: str) -> float:
    """A run's validation score as DomainBed's Q.sorted orders it: NaN lowest."""
    score = record.scores[selection][0]
    return -math.inf if math.isnan(score) else score


def select_run(runs: list[RunRecord], selection: str) -> RunRecord:
    """DomainBed's hparams_accs(...)[0]: the runs (in reading order) stably sorted by validation
    score and reversed, so among tied runs the last one read wins."""
    return sorted(runs, key=lambda r: _validation_key(r, selection))[::-1][0]


def aggregate(records: list[RunRecord], selection: str) -> dict:
    """{(dataset, method, test_domains): {"ood": [...], "id": [...], "trial_seeds": [...]}},
    one entry per trial seed (ascending), from the run `select_run` picks for that seed."""
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r.dataset, r.method, r.test_domains, r.trial_seed)].append(r)
    out = collections.defaultdict(lambda: {"ood": [], "id": [], "trial_seeds": []})
    for (dataset, method, test, seed), runs in sorted(groups.items()):
        best = select_run(runs, selection)
        out[(dataset, method, test)]["ood"].append(best.scores[selection][1])
        out[(dataset, method, test)]["id"].append(best.scores[selection][2])
        out[(dataset, method, test)]["trial_seeds"].append(seed)
    return out


def _cell(xs: list[float] | None, error_bar: str, row_seeds: int) -> str:
    """DomainBed's format_mean text ("X" when empty); one value alone; "(n=…)" when the cell
    has fewer seeds than its row."""
    if not xs:
        return "X"
    mean, se = mean_se(xs, error_bar)
    text = f"{100 * mean:.1f}" if len(xs) == 1 else f"{100 * mean:.1f} ± {100 * se:.1f}"
    return text + (f" (n={len(xs)})" if len(xs) < row_seeds else "")


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


def _row(method: str, cells: list, error_bar: str, avg: str, marks: list | None = None) -> str:
    """A markdown row: method, seeds (the most any cell has), the cells (each followed by its
    mark, if any), Avg."""
    seeds = max((len(xs) for xs in cells if xs), default=0)
    texts = [_cell(xs, error_bar, seeds) for xs in cells]
    texts = [t + m for t, m in zip(texts, marks or [""] * len(texts), strict=True)]
    return f"| {method} | {seeds} | " + " | ".join(texts) + f" | {avg} |"


def _header(title: str, columns: list[str]) -> list[str]:
    return [
        f"{title}\n",
        "| method | seeds | " + " | ".join(columns) + " | Avg |",
        "|---" * (len(columns) + 3) + "|",
    ]


def seed_averages(agg: dict, dataset: str, method: str, domains: list[str]) -> tuple[list, bool]:
    """collect_results' trial_averages: per trial seed (ascending), the mean of its selected
    OOD accuracies over the test domains that seed has; and whether a seed lacks one."""
    by_seed = collections.defaultdict(list)
    for d in domains:
        v = agg.get((dataset, method, d), {"ood": [], "trial_seeds": []})
        for seed, x in zip(v["trial_seeds"], v["ood"], strict=True):
            by_seed[seed].append(x)
    partial = any(len(xs) < len(domains) for xs in by_seed.values())
    return [float(np.mean(by_seed[s])) for s in sorted(by_seed)], partial


def _dataset_table(records, agg, dataset, methods, selection, error_bar) -> str:
    """One dataset's table: methods × test domains + Avg (the columns' means, no ±)."""
    domains = _domain_order(records, dataset, {k[2] for k in agg if k[0] == dataset})
    title = f"**{dataset}, {selection}** (OOD accuracy: test domain, in split)"
    lines = _header(title, domains)
    for method in methods:
        cells = [agg.get((dataset, method, d), {}).get("ood") for d in domains]
        means = [100 * float(np.mean(xs)) for xs in cells if xs]
        avg = f"{sum(means) / len(means):.1f}" if len(means) == len(domains) else "X"
        lines.append(_row(method, cells, error_bar, avg))
    note = "Avg = the mean of the columns' means (no ±, as DomainBed; see the averages table)"
    lines.append(f"\n{ERROR_BARS[error_bar]}; {ONE_SEED}; {note}.")
    return "\n".join(lines)


def _averages_table(records, agg, datasets, methods, selection, error_bar) -> str:
    """The across-datasets table: per dataset, mean ± error bar over trial seeds of the seeds'
    averages over test domains; Avg: the mean of those means, no ±."""
    lines = _header(f"**Averages, {selection}**", datasets)
    marked = False
    for method in methods:
        cells, marks, means = [], [], []
        for dataset in datasets:
            domains = _domain_order(records, dataset, {k[2] for k in agg if k[0] == dataset})
            averages, partial = seed_averages(agg, dataset, method, domains)
            cells.append(averages)
            marks.append(" †" if partial else "")
            means.append(100 * float(np.mean(averages)) if averages else None)
        avg = "X" if None in means else f"{sum(means) / len(means):.1f}"
        lines.append(_row(method, cells, error_bar, avg, marks))
        marked |= any(marks)
    over = "over trial seeds of each seed's average over test domains"
    lines.append(f"\n{ERROR_BARS[error_bar]}, {over}; {ONE_SEED}; Avg: no ±.")
    if marked:
        lines.append("† a trial seed lacks a test domain: DomainBed averages it over the rest.")
    return "\n".join(lines)


def markdown(records: list[RunRecord], error_bar: str = "domainbed") -> str:
    """DomainBed-style tables: per selection, one per dataset (methods × test domains + Avg),
    then the averages table; every method gets a row in every table ("X" where missing)."""
    out = []
    for selection in SELECTIONS:
        agg = aggregate(records, selection)
        datasets = sorted({k[0] for k in agg})
        methods = sorted({k[1] for k in agg})
        for dataset in datasets:
            out.append(_dataset_table(records, agg, dataset, methods, selection, error_bar))
        out.append(_averages_table(records, agg, datasets, methods, selection, error_bar))
    return "\n\n".join(out) + "\n"


def write_csv(records: list[RunRecord], path: pathlib.Path, error_bar: str = "domainbed") -> None:
    """Long-format CSV: one row per (selection, dataset, method, test domains); the error bar
    `error_bar` names (NaN for one seed under "sample")."""
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
                "error_bar",
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
                        *mean_se(v["ood"], error_bar),
                        *mean_se(v["id"], error_bar),
                        error_bar,
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


def write_report(dirs: list[str], out: str | None = None, error_bar: str = "domainbed") -> str:
    """The tables of every run under `dirs` (markdown), also written with results.csv and
    id_vs_ood.png into `out` when given: the command line's work, callable without it.
    `error_bar`: "domainbed" (DomainBed's, divisor n) or "sample" (divisor n − 1)."""
    if error_bar not in ERROR_BARS:
        raise ValueError(f"error_bar={error_bar!r}: not one of {sorted(ERROR_BARS)}.")
    records = run_records(dirs)
    if not records:
        raise FileNotFoundError(f"No {results.RESULTS} under {dirs}.")
    text = markdown(records, error_bar)
    if out:
        out_dir = pathlib.Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tables.md").write_text(text, encoding="utf-8")
        write_csv(records, out_dir / "results.csv", error_bar)
        plot_id_vs_ood(records, out_dir / "id_vs_ood.png")
    return text


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this command line's flags in `flag_values` when it starts, not at import: the
    entry points share flag names (--out), and tests import several of them into one process."""
    help_ = "Directory for tables.md, results.csv and id_vs_ood.png."
    flags.DEFINE_string("out", None, help_, flag_values=flag_values)
    help_ = (
        "Error bar over trial seeds: domainbed = DomainBed's collect_results (np.std, divisor n, "
        "/ sqrt(n)); sample = the sample standard error (divisor n - 1)."
    )
    flags.DEFINE_enum("error_bar", "domainbed", list(ERROR_BARS), help_, flag_values=flag_values)


def main(argv: list[str]) -> None:
    """Prints (and with --out writes) the tables of the runs under the positional DIRs."""
    if len(argv) < 2:
        raise app.UsageError("Give one or more run directories (or their parents).")
    try:
        print(write_report(argv[1:], flags.FLAGS.out, flags.FLAGS.error_bar))
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


def run() -> None:
    """The `richft-report` console script: same as `python -m richft_jax.report`."""
    cli.run(main, __name__, __doc__, define_flags)


if __name__ == "__main__":
    run()
