"""The report's Figure-2 cloud and Figure-3 dropout-rate curve against numbers computed by hand
on runs written here: 3 test domains × 2 learning rates × 2 trial seeds per method."""

import json
import math

import numpy as np
import pytest

from richft_jax import report, report_figures
from richft_jax import selection as sel

DOMAINS = ("a", "b", "c")


def write_run(root, method, rate, lr, test, seed, val, ood):
    """One single-step run: its training domains' out splits score `val` (ID), the test domain's
    in split `ood`; config.json holds the hyper-parameters the report reads."""
    path = root / f"{method}_p{rate}" / f"lr{lr}" / test / f"seed{seed}"
    path.mkdir(parents=True)
    base = {"step": 10, "method": method, "trial_seed": seed, "seed": seed, "dataset": "toy"}
    base |= {"test_domains": [test], "loss": 1.0}
    rows = []
    for d in DOMAINS:
        rows.append(
            {
                **base,
                "domain": d,
                "split": "in",
                "is_test_domain": d == test,
                "accuracy": ood if d == test else 1.0,
            }
        )
        rows.append({**base, "domain": d, "split": "out", "is_test_domain": d == test,
                     "accuracy": 0.5 if d == test else val})  # fmt: skip
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"dropout_rate": rate, "optim": {"lr": lr, "weight_decay": 0.0}, "seed": seed}
    (path / "config.json").write_text(json.dumps(config))


def values(method_index, rate, lr, test, seed):
    """A run's (ID, OOD): distinct, known numbers."""
    i = DOMAINS.index(test)
    val = 0.60 + 0.05 * i + (0.10 if lr == 0.1 else 0.0) + 0.01 * seed + 0.1 * rate
    ood = 0.30 + 0.04 * i + (0.02 if lr == 0.1 else 0.08) + 0.02 * seed + 0.2 * rate
    return round(val + 0.001 * method_index, 6), round(ood, 6)


@pytest.fixture
def runs(tmp_path):
    spec = [("erm", 0.0), ("very_large_dropout", 0.5), ("very_large_dropout", 0.9)]
    for m, (method, rate) in enumerate(spec):
        for lr in (0.1, 0.01):
            for test in DOMAINS:
                for seed in (0, 1):
                    write_run(
                        tmp_path, method, rate, lr, test, seed, *values(m, rate, lr, test, seed)
                    )
    return tmp_path


def test_setting_means_and_cloud_points_by_hand(runs):
    records = sel.run_records([str(runs)])
    per_domain = report_figures.setting_means(records, "toy", "erm")
    assert sorted(per_domain) == list(DOMAINS)
    assert len(per_domain["a"]) == 2  # Two learning rates.
    id_, ood, seeds = per_domain["b"][("0.1", "0.0")]
    assert seeds == [0, 1]
    assert id_ == pytest.approx(np.mean([values(0, 0.0, 0.1, "b", s)[0] for s in (0, 1)]))
    assert ood == pytest.approx(np.mean([values(0, 0.0, 0.1, "b", s)[1] for s in (0, 1)]))
    cloud = report_figures.cloud(records, "toy")
    pts = cloud["erm"]["points"]
    assert pts.shape == (8, 2)  # 2 settings ^ 3 test domains.
    # The point choosing lr 0.1 on a, 0.01 on b, 0.1 on c.
    choice = {"a": 0.1, "b": 0.01, "c": 0.1}
    expected = np.mean(
        [[np.mean([values(0, 0.0, lr, t, s)[k] for s in (0, 1)]) for k in (0, 1)]
         for t, lr in choice.items()], axis=0)  # fmt: skip
    assert np.min(np.abs(pts - expected).sum(axis=1)) < 1e-9
    # DomainBed's selection: lr 0.1 has the better validation everywhere.
    sel_id, sel_ood = cloud["erm"]["selected"]
    assert sel_ood == pytest.approx(
        np.mean([values(0, 0.0, 0.1, t, s)[1] for t in DOMAINS for s in (0, 1)])
    )
    assert sel_id == pytest.approx(
        np.mean([values(0, 0.0, 0.1, t, s)[0] for t in DOMAINS for s in (0, 1)])
    )
    assert pts[:, 1].max() > sel_ood  # lr 0.01 is better OOD: the cloud shows it.


def test_a_method_with_several_rates_gets_a_row_per_rate(runs):
    methods = {r.method for r in sel.run_records([str(runs)])}
    assert methods == {"erm", "very_large_dropout (p=0.5)", "very_large_dropout (p=0.9)"}


def test_rate_curve_by_hand_and_in_the_tables(runs):
    records = sel.run_records([str(runs)])
    curve = report_figures.rate_curve(records, "toy")
    assert list(curve) == [0.0, 0.5, 0.9]
    m = 2  # rate 0.9 is the third method written
    per_seed = [np.mean([values(m, 0.9, 0.1, t, s)[1] for t in DOMAINS]) for s in (0, 1)]
    mean, se = curve[0.9]["ood"]
    assert mean == pytest.approx(np.mean(per_seed))
    assert se == pytest.approx(np.std(per_seed) / math.sqrt(2))  # DomainBed's, divisor n.
    assert curve[0.9]["seeds"] == 2 and curve[0.9]["domains"] == 3
    text = report.markdown(records)
    assert "accuracy against the penultimate dropout rate" in text
    assert f"| 0.9 | 2 | 3 | {100 * mean:.1f} ± {100 * se:.1f} |" in text


def test_no_rate_curve_with_one_rate(tmp_path):
    for test in DOMAINS:
        write_run(tmp_path, "erm", 0.0, 0.1, test, 0, *values(0, 0.0, 0.1, test, 0))
    records = sel.run_records([str(tmp_path)])
    assert report_figures.rate_curve(records, "toy") == {}
    assert "dropout rate" not in report.markdown(records)
    cloud = report_figures.cloud(records, "toy")
    assert cloud["erm"]["points"].shape == (1, 2)  # One setting everywhere: one point.


def test_hparams_choose_what_tells_settings_apart(runs):
    # With no hyper-parameter keys every learning rate is one setting: one cloud point per
    # domain's best-of-duplicates, i.e. a single point.
    records = sel.run_records([str(runs)], hparams=())
    assert report_figures.cloud(records, "toy")["erm"]["points"].shape == (1, 2)


def test_report_writes_the_figures(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    report.write_report([str(runs)], str(out))
    for name in ("id_vs_ood.png", "cloud_toy.png", "dropout_rate_toy.png", "tables.md"):
        assert (out / name).stat().st_size > 5_000 or name == "tables.md", name
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"**to"), name


def test_rate_curve_compares_rates_on_the_test_domains_they_all_have(runs):
    # One more rate, on test domain "a" only (an unfinished sweep): every rate is then averaged
    # over "a" alone.
    for lr in (0.1, 0.01):
        write_run(runs, "very_large_dropout", 0.99, lr, "a", 0, *values(3, 0.99, lr, "a", 0))
    curve = report_figures.rate_curve(sel.run_records([str(runs)]), "toy")
    assert list(curve) == [0.0, 0.5, 0.9, 0.99]
    assert {v["domains"] for v in curve.values()} == {1}
    per_seed = [values(0, 0.0, 0.1, "a", s)[1] for s in (0, 1)]
    assert curve[0.0]["ood"][0] == pytest.approx(np.mean(per_seed))
