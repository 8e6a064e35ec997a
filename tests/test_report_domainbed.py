"""Report vs DomainBed: every cell and ± of the report's tables against a small, independent
re-implementation of DomainBed's collect_results (format_mean, print_results_tables) and
model_selection (hparams_accs, sweep_acc, IIDAccuracySelectionMethod, OracleSelectionMethod),
on runs built here: 2 hyper-parameter settings × 3 trial seeds × 2 test domains, with ties in
validation score between settings and one seed missing for one test domain."""

import csv
import json

import numpy as np
import pytest

from richft_jax import report
from richft_jax import selection as sel

DOMAINS = ("a", "b")  # DomainBed's env0, env1.
MISSING = (2, "b")  # (trial seed, test domain) with no runs.


def make_runs() -> dict:
    """{(hparams, trial seed, test domain): {step: (train-domain out acc, test in, test out)}}."""
    rng = np.random.default_rng(0)
    runs = {}
    for hp in (0, 1):
        for seed in (0, 1, 2):
            for test in DOMAINS:
                if (seed, test) != MISSING:
                    values = rng.integers(30, 95, size=(3, 3)) / 100
                    runs[(hp, seed, test)] = {step: tuple(values[step - 1]) for step in (1, 2, 3)}
    # Training-domain validation tie between the settings (0.8 at step 2 for both): DomainBed
    # picks hp 1, the last, so the cell gets 0.47, not 0.41.
    runs[(0, 0, "a")] = {1: (0.7, 0.30, 0.5), 2: (0.8, 0.41, 0.6), 3: (0.6, 0.35, 0.4)}
    runs[(1, 0, "a")] = {1: (0.5, 0.20, 0.5), 2: (0.8, 0.47, 0.3), 3: (0.8, 0.33, 0.3)}
    # Oracle tie (test out split 0.66 at the last step for both): hp 1's test in split, 0.58.
    runs[(0, 1, "b")] = {1: (0.9, 0.40, 0.7), 2: (0.6, 0.45, 0.6), 3: (0.7, 0.52, 0.66)}
    runs[(1, 1, "b")] = {1: (0.6, 0.40, 0.7), 2: (0.6, 0.45, 0.6), 3: (0.7, 0.58, 0.66)}
    return runs


def write_runs(root, runs: dict) -> None:
    """Our results.jsonl rows, one run directory per (hparams, seed, test): h{hp}/... so that
    the report reads hp 0 before hp 1 (DomainBed's ascending hparams_seed)."""
    for (hp, seed, test), steps in runs.items():
        train = "b" if test == "a" else "a"
        rows = []
        for step, (val, test_in, test_out) in steps.items():
            base = {"step": step, "method": "erm", "trial_seed": seed, "seed": seed}
            base |= {"test_domains": [test], "dataset": "toy", "loss": 1.0}
            for domain, split, acc in (
                (DOMAINS[0], "in", 1.0 if train == "a" else test_in),
                (DOMAINS[0], "out", val if train == "a" else test_out),
                (DOMAINS[1], "in", 1.0 if train == "b" else test_in),
                (DOMAINS[1], "out", val if train == "b" else test_out),
            ):
                where = {"domain": domain, "split": split, "is_test_domain": domain == test}
                rows.append({**base, **where, "accuracy": acc})
        path = root / f"h{hp}" / f"test={test}" / f"seed{seed}"
        path.mkdir(parents=True)
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------- DomainBed's rules, re-implemented
def domainbed_records(runs: dict) -> list[dict]:
    """The runs as DomainBed's results.jsonl records (one per step, env{i}_{in,out}_acc)."""
    records = []
    for (hp, seed, test), steps in runs.items():
        t = DOMAINS.index(test)
        for step, (val, test_in, test_out) in steps.items():
            args = {"trial_seed": seed, "dataset": "toy", "algorithm": "erm"}
            args |= {"test_envs": [t], "hparams_seed": hp}
            record = {"args": args, "step": step}
            record |= {f"env{1 - t}_in_acc": 1.0, f"env{1 - t}_out_acc": val}
            record |= {f"env{t}_in_acc": test_in, f"env{t}_out_acc": test_out}
            records.append(record)
    return records


def run_acc(run: list[dict], selection: str) -> dict:
    """IIDAccuracySelectionMethod / OracleSelectionMethod.run_acc."""
    t = run[0]["args"]["test_envs"][0]
    if selection == "oracle":
        last = sorted(run, key=lambda r: r["step"])[-1]
        return {"val_acc": last[f"env{t}_out_acc"], "test_acc": last[f"env{t}_in_acc"]}
    steps = [
        {
            "val_acc": np.mean([r[f"env{i}_out_acc"] for i in range(len(DOMAINS)) if i != t]),
            "test_acc": r[f"env{t}_in_acc"],
        }
        for r in run
    ]
    return max(steps, key=lambda s: s["val_acc"])  # Q.argmax: the first maximum.


def sweep_acc(records: list[dict], selection: str) -> float:
    """SelectionMethod.sweep_acc: runs grouped by hparams_seed (ascending, as Q.group sorts),
    sorted by val_acc and reversed: hparams_accs[0]'s test_acc."""
    by_hp = {}
    for r in records:
        by_hp.setdefault(r["args"]["hparams_seed"], []).append(r)
    accs = [run_acc(by_hp[hp], selection) for hp in sorted(by_hp)]
    return sorted(accs, key=lambda a: a["val_acc"])[::-1][0]["test_acc"]


def format_mean(data: list[float]) -> tuple[float | None, str]:
    """collect_results.format_mean (text with ± for +/-)."""
    if len(data) == 0:
        return None, "X"
    mean = 100 * np.mean(list(data))
    err = 100 * np.std(list(data) / np.sqrt(len(data)))
    return mean, f"{mean:.1f} ± {err:.1f}"


def domainbed_tables(records: list[dict], selection: str) -> tuple[list[str], list[str]]:
    """print_results_tables for one algorithm and one dataset: the dataset row (cells + Avg)
    and the averages row (the dataset's cell + Avg)."""
    grouped = {}  # reporting.get_grouped_records
    for r in records:
        for t in r["args"]["test_envs"]:
            grouped.setdefault((r["args"]["trial_seed"], t), []).append(r)
    groups = [(seed, t, sweep_acc(rs, selection)) for (seed, t), rs in grouped.items()]
    row, means = [], []
    for t in range(len(DOMAINS)):
        mean, text = format_mean([acc for _, env, acc in groups if env == t])
        row.append(text)
        means.append(mean)
    row.append("X" if None in means else f"{sum(means) / len(means):.1f}")
    trial_averages = [
        float(np.mean([acc for s, _, acc in groups if s == seed]))
        for seed in sorted({s for s, _, _ in groups})
    ]
    mean, text = format_mean(trial_averages)
    return row, [text, f"{mean:.1f}"]


# ------------------------------------------------------------------------- the comparison
def table_rows(text: str, title: str) -> dict[str, list[str]]:
    """{method: [seeds, cells..., Avg]} of the markdown table under `title`."""
    lines = text.split(title, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    rows = {}
    for line in lines[start + 2 :]:  # After the header and its |---| line.
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("selection", sel.SELECTIONS)
def test_every_cell_and_error_bar_as_domainbed(tmp_path, selection):
    runs = make_runs()
    write_runs(tmp_path, runs)
    text = report.write_report([str(tmp_path)], str(tmp_path / "out"))
    expected_row, expected_averages = domainbed_tables(domainbed_records(runs), selection)

    row = table_rows(text, f"**toy, {selection}**")["erm"]
    assert row[0] == "3"  # seeds: the most any cell has.
    assert row[2].endswith(" (n=2)")  # Test domain b: seed 2 missing.
    assert [c.removesuffix(" (n=2)") for c in row[1:]] == expected_row
    averages = table_rows(text, f"**Averages, {selection}**")["erm"]
    # Seed 2 lacks test domain b: DomainBed averages that seed over domain a alone (no X).
    assert averages[0] == "3" and averages[1].endswith(" †")
    assert [averages[1].removesuffix(" †"), averages[2]] == expected_averages
    assert sel.ERROR_BARS["domainbed"] in text and "† a trial seed lacks" in text

    with open(tmp_path / "out" / "results.csv", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            if line["selection"] == selection:
                cell = expected_row[DOMAINS.index(line["test_domains"])]
                m, se = (float(line[k]) for k in ("ood_mean", "ood_se"))
                assert cell == f"{100 * m:.1f} ± {100 * se:.1f}"
                assert line["error_bar"] == "domainbed"


def test_the_tied_settings_by_hand(tmp_path):
    """The ties' winners, and the cells, by hand: the last setting read wins."""
    runs = make_runs()
    write_runs(tmp_path, runs)
    records = sel.run_records([str(tmp_path)])
    tdv = sel.aggregate(records, "training_domain_validation")[("toy", "erm", "a")]
    assert tdv["trial_seeds"] == [0, 1, 2] and tdv["ood"][0] == 0.47  # Not hp 0's 0.41.
    oracle = sel.aggregate(records, "oracle")[("toy", "erm", "b")]
    assert oracle["trial_seeds"] == [0, 1] and oracle["ood"][1] == 0.58  # Not hp 0's 0.52.
    # Test domain b under oracle: two seeds, DomainBed's ± = |x0 - x1| / 2 / sqrt(2).
    group = [r for r in records if (r.trial_seed, r.test_domains) == (0, "b")]
    x0 = sel.select_run(group, "oracle").scores["oracle"][1]
    xs = [x0, 0.58]
    mean, se = sel.mean_se(xs)
    assert mean == pytest.approx(sum(xs) / 2) and se == pytest.approx(abs(x0 - 0.58) / 2 / 2**0.5)
    _, sample = sel.mean_se(xs, "sample")
    assert sample == pytest.approx(se * 2**0.5)  # n - 1 = 1: √(n / (n - 1)) = √2 times more.
    # Reading order decides: with hp 1's directory read first, hp 0 wins the tie.
    swapped = sel.run_records([str(tmp_path / "h1"), str(tmp_path / "h0")])
    tdv = sel.aggregate(swapped, "training_domain_validation")[("toy", "erm", "a")]
    assert tdv["ood"][0] == 0.41


def test_one_seed_and_the_sample_error_bar(tmp_path):
    """One seed: the mean alone (DomainBed prints ± 0.0); --error_bar=sample: divisor n - 1."""
    runs = {k: v for k, v in make_runs().items() if k[1] == 0}
    write_runs(tmp_path, runs)
    text = report.write_report([str(tmp_path)])
    row = table_rows(text, "**toy, oracle**")["erm"]
    assert row[0] == "1" and "±" not in "".join(row)
    runs = make_runs()
    write_runs(tmp_path / "all", runs)
    text = report.write_report([str(tmp_path / "all")], error_bar="sample")
    assert sel.ERROR_BARS["sample"] in text
    records = sel.run_records([str(tmp_path / "all")])
    xs = sel.aggregate(records, "oracle")[("toy", "erm", "a")]["ood"]
    se = np.std(xs, ddof=1) / np.sqrt(3)
    cell = table_rows(text, "**toy, oracle**")["erm"][1]
    assert cell == f"{100 * np.mean(xs):.1f} ± {100 * se:.1f}"
