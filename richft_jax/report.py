"""Collects finished runs into DomainBed-style tables and the paper's ID-vs-OOD picture.

  python -m richft_jax.report DIR... [--out=OUT_DIR] [--error_bar=domainbed|sample]
  (or: richft-report DIR... [--out=OUT_DIR] [--error_bar=...])

Reads the rows of every run under the given directories (numbers are never copied by hand):
local or gs:// (DIR and --out), a quoted glob such as 'gs://bucket/sweep/*' expanded (a bucket
has no shell to do it), each run's results.jsonl and a bucket's round objects (results.py).
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
- dropout-rate table: where a dataset's penultimate-dropout runs (methods erm and
  very_large_dropout) hold several rates, OOD and ID against the rate (each rate its own
  method, "very_large_dropout (p=0.5)"; hyper-parameter settings selected at each rate); one
  per backbone where from-scratch runs (methods "erm_scratch", "very_large_dropout_scratch":
  configs/demo_scratch.py) hold several rates too, and one per pretrained backbone where the
  runs hold several ("pretrained (demo_small_resnet_glyphs)").
- backbones: runs fine-tuned from different pretrained backbones (config.json's
  pretrained.sha256, else its path) are never selected among nor averaged: a method whose runs
  hold several gets a row per backbone, "erm [demo_small_resnet_glyphs]" (its file's name),
  before any rate, "erm [demo_small_resnet_glyphs] (p=0.5)".
Writes tables.md, results.csv and the figures into --out when given: id_vs_ood.png;
cloud_<dataset>.png, the paper's Figure 2 (every choice of one hyper-parameter setting, the
--hparams values of each run's config.json, per test domain); dropout_rate_<dataset>.png,
its Figure 3 (with several rates; pretrained and from-scratch curves side by side).
"""

import collections
import csv
import io
import os

import numpy as np
from absl import app, flags

from richft_jax import cli, paths, report_figures, results
from richft_jax.selection import (
    ERROR_BARS,
    HPARAMS,
    SELECTIONS,
    RunRecord,
    aggregate,
    mean_se,
    run_records,
)

ONE_SEED = "a cell with one seed shows its mean alone (DomainBed prints ± 0.0 there)"


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
    then the averages table; every method gets a row in every table ("X" where missing); then
    the dropout-rate tables of datasets whose records hold several rates."""
    out = []
    for selection in SELECTIONS:
        agg = aggregate(records, selection)
        datasets = sorted({k[0] for k in agg})
        methods = sorted({k[1] for k in agg})
        for dataset in datasets:
            out.append(_dataset_table(records, agg, dataset, methods, selection, error_bar))
        out.append(_averages_table(records, agg, datasets, methods, selection, error_bar))
    for dataset in sorted({r.dataset for r in records}):
        curves = report_figures.rate_curves(records, dataset, error_bar)
        for backbone, curve in curves.items():  # Labels named when there are several.
            name = backbone if len(curves) > 1 else ""
            out.append(report_figures.rate_table(curve, dataset, ERROR_BARS[error_bar], name))
    return "\n\n".join(out) + "\n"


def write_csv(
    records: list[RunRecord], path: str | os.PathLike, error_bar: str = "domainbed"
) -> None:
    """Long-format CSV (local or gs://): one row per (selection, dataset, method, test
    domains); the error bar `error_bar` names (NaN for one seed under "sample")."""
    paths.path(path, "--out").write_text(csv_text(records, error_bar), encoding="utf-8")


def csv_text(records: list[RunRecord], error_bar: str = "domainbed") -> str:
    """`write_csv`'s text."""
    with io.StringIO(newline="") as f:
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
        return f.getvalue()


def write_report(
    dirs: list[str],
    out: str | None = None,
    error_bar: str = "domainbed",
    hparams: tuple[str, ...] = HPARAMS,
) -> str:
    """The tables of every run under `dirs` (markdown), also written with results.csv and the
    figures into `out` when given: the command line's work, callable without it. `dirs` and
    `out`: local or gs:// (`dirs` may hold glob patterns: a bucket has no shell to expand
    them).
    `error_bar`: "domainbed" (DomainBed's, divisor n) or "sample" (divisor n − 1); `hparams`:
    the config keys whose values make a run's hyper-parameter setting (the clouds' axes)."""
    if error_bar not in ERROR_BARS:
        raise ValueError(f"error_bar={error_bar!r}: not one of {sorted(ERROR_BARS)}.")
    records = run_records(dirs, hparams)
    if not records:
        raise FileNotFoundError(f"No {results.RESULTS} under {dirs}.")
    text = markdown(records, error_bar)
    if out:
        out_dir = paths.make_dirs(out, "--out")
        (out_dir / "tables.md").write_text(text, encoding="utf-8")
        write_csv(records, out_dir / "results.csv", error_bar)
        report_figures.write_figures(records, out_dir, error_bar)
    return text


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this command line's flags in `flag_values` when it starts, not at import: the
    entry points share flag names (--out), and tests import several of them into one process."""
    help_ = "Directory for tables.md, results.csv and the figures (see the module docstring)."
    flags.DEFINE_string("out", None, help_, flag_values=flag_values)
    help_ = (
        "Config keys (dotted, as in config.json) whose values make a run's hyper-parameter "
        "setting: runs of one method, test domain and trial seed that differ in them are the "
        "settings DomainBed selects among and the Figure-2 cloud chooses from."
    )
    flags.DEFINE_list("hparams", list(HPARAMS), help_, flag_values=flag_values)
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
        f = flags.FLAGS
        print(write_report(argv[1:], f.out, f.error_bar, tuple(f.hparams)))
    except (FileNotFoundError, ValueError) as e:  # No runs; a path that is not one (https://).
        raise SystemExit(str(e)) from None


def run() -> None:
    """The `richft-report` console script: same as `python -m richft_jax.report`."""
    cli.run(main, __name__, __doc__, define_flags, uses_jax=False)


if __name__ == "__main__":
    run()
