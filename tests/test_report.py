"""Report: DomainBed selection and mean ± standard error against a hand-computed example."""

import json
import math

import pytest

from richft_jax import report
from richft_jax import selection as sel


def write_run(path, method, trial_seed, test, steps):
    """steps: {step: (id_out_acc, test_in_acc, test_out_acc)} for a 2-domain dataset."""
    path.mkdir(parents=True)
    rows = []
    for step, (id_acc, ood_in, ood_out) in steps.items():
        base = {
            "step": step,
            "method": method,
            "trial_seed": trial_seed,
            "seed": 0,
            "test_domains": [test],
            "dataset": "toy",
            "loss": 1.0,
        }
        train = "b" if test == "a" else "a"
        rows += [
            {**base, "domain": train, "split": "out", "is_test_domain": False, "accuracy": id_acc},
            {**base, "domain": train, "split": "in", "is_test_domain": False, "accuracy": 1.0},
            {**base, "domain": test, "split": "in", "is_test_domain": True, "accuracy": ood_in},
            {**base, "domain": test, "split": "out", "is_test_domain": True, "accuracy": ood_out},
        ]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_selection_and_mean_standard_error(tmp_path):
    # Trial seed 0: two hyper-parameter runs; run h1 has the best validation (0.9 at step 2).
    write_run(tmp_path / "h0s0", "erm", 0, "a", {1: (0.5, 0.30, 0.8), 2: (0.6, 0.40, 0.2)})
    write_run(tmp_path / "h1s0", "erm", 0, "a", {1: (0.7, 0.10, 0.1), 2: (0.9, 0.20, 0.3)})
    # Trial seed 1: one run; best validation at step 1 (ties broken by the earliest step).
    write_run(tmp_path / "h0s1", "erm", 1, "a", {1: (0.8, 0.50, 0.5), 2: (0.8, 0.90, 0.6)})
    records = sel.run_records([str(tmp_path)])
    tdv = sel.aggregate(records, "training_domain_validation")[("toy", "erm", "a")]
    assert tdv["ood"] == pytest.approx([0.20, 0.50])  # h1s0 at step 2; h0s1 at step 1.
    assert tdv["id"] == pytest.approx([0.9, 0.8])
    oracle = sel.aggregate(records, "oracle")[("toy", "erm", "a")]
    # Oracle: last step, run with the best test out split (h1s0: 0.3 > h0s0: 0.2).
    assert oracle["ood"] == pytest.approx([0.20, 0.90])
    # DomainBed's error bar (collect_results.format_mean): np.std with divisor n, over sqrt(n):
    # std([0.2, 0.5]) = 0.15, / sqrt(2). This test encoded the n - 1 version (sample std
    # sqrt(0.045), ± 15.0) before the report followed DomainBed; that is now --error_bar=sample.
    m, se = sel.mean_se([0.2, 0.5])
    assert m == pytest.approx(0.35) and se == pytest.approx(0.15 / math.sqrt(2))
    m, se = sel.mean_se([0.2, 0.5], "sample")
    assert m == pytest.approx(0.35) and se == pytest.approx(math.sqrt(0.045) / math.sqrt(2))
    text = report.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "| erm | 2 | X | 35.0 ± 10.6 | X |" in text  # Domain b was never the test domain.
    assert sel.ERROR_BARS["domainbed"] in text
    sample = report.write_report([str(tmp_path)], error_bar="sample")
    assert "| erm | 2 | X | 35.0 ± 15.0 | X |" in sample and sel.ERROR_BARS["sample"] in sample
    assert (tmp_path / "out" / "id_vs_ood.png").stat().st_size > 1000
    csv_text = (tmp_path / "out" / "results.csv").read_text()
    assert "oracle,toy,erm,a,2,0.55" in csv_text


def test_columns_follow_the_datasets_domain_order(tmp_path):
    write_run(tmp_path / "r0", "erm", 0, "a", {1: (0.5, 0.3, 0.8)})
    write_run(tmp_path / "r1", "erm", 0, "b", {1: (0.5, 0.6, 0.8)})
    records = sel.run_records([str(tmp_path)])
    assert records[0].domains == ("b", "a")  # r0's rows list b (training) first.
    assert "| method | seeds | b | a | Avg |" in report.markdown(records)
    # Domain b never tested: its column stays, with X, and so does the average. One seed: the
    # mean alone (DomainBed would print "30.0 +/- 0.0").
    text = report.markdown(sel.run_records([str(tmp_path / "r0")]))
    assert "| method | seeds | b | a | Avg |" in text and "| erm | 1 | X | 30.0 | X |" in text


def test_the_report_command_imports_neither_tensorflow_nor_jax(tmp_path):
    """`python -m richft_jax.report` reads records and draws: seconds, not TF's and JAX's
    imports (the console keeps clu's writers out; cli.run(uses_jax=False))."""
    import pathlib  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    records = pathlib.Path(__file__).resolve().parents[1] / "docs/measurements/demo_grid"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['report', {str(records)!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "try:\n    runpy.run_module('richft_jax.report', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('tensorflow', 'jax', 'clu') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "tables.md").read_text().count("|") > 50
