"""The report's Figure-2 cloud and Figure-3 dropout-rate curve against numbers computed by hand
on runs written here: 3 test domains × 2 learning rates × 2 trial seeds per method."""

import json
import math

import numpy as np
import pytest

from richft_jax import report, report_figures
from richft_jax import selection as sel

DOMAINS = ("a", "b", "c")


def write_run(root, method, rate, lr, test, seed, val, ood, pretrained=None):
    """One single-step run: its training domains' out splits score `val` (ID), the test domain's
    in split `ood`; config.json holds the hyper-parameters the report reads and, given
    `pretrained` ({"path": ..., "sha256": ...}), its backbone (in a folder of its own)."""
    path = root / f"{method}_p{rate}" / f"lr{lr}" / test / f"seed{seed}"
    if pretrained is not None:
        path = (
            root
            / (pretrained["path"] or "scratch").strip("/").replace("/", "_")
            / path.relative_to(root)
        )
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
    config |= {} if pretrained is None else {"pretrained": pretrained}
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


GLYPHS = {"path": "/x/richft_jax/assets/demo_small_resnet_glyphs.msgpack", "sha256": "e3" * 32}
LETTERS = {"path": "/x/richft_jax/assets/demo_small_resnet_letters.msgpack", "sha256": "e6" * 32}
SCRATCH = {"path": None, "sha256": None}


def backbone_values(backbone, rate, lr, test, seed):
    """A run's (ID, OOD) on `backbone`: the letters backbone validates better (it would win a
    selection among backbones) and generalises worse."""
    val, ood = values(0, rate, lr, test, seed)
    if backbone is LETTERS:
        return round(val + 0.2, 6), round(ood - 0.2, 6)
    return (round(val - 0.3, 6), round(ood - 0.1, 6)) if backbone is SCRATCH else (val, ood)


def write_backbone_runs(root, spec):
    """Runs of `spec` [(backbone, method, rate)] × 2 learning rates × test domains × 2 seeds."""
    for backbone, method, rate in spec:
        for lr in (0.1, 0.01):
            for test in DOMAINS:
                for seed in (0, 1):
                    v = backbone_values(backbone, rate, lr, test, seed)
                    write_run(root, method, rate, lr, test, seed, *v, pretrained=backbone)


TWO_BACKBONES = [
    (GLYPHS, "erm", 0.0),
    (GLYPHS, "very_large_dropout", 0.5),
    (GLYPHS, "very_large_dropout", 0.9),
    (LETTERS, "erm", 0.0),  # The same settings, seeds and test domains as glyphs' ERM.
    (LETTERS, "very_large_dropout", 0.9),
    (SCRATCH, "erm_scratch", 0.0),
    (SCRATCH, "very_large_dropout_scratch", 0.9),
]


def test_a_method_with_several_backbones_gets_a_name_per_backbone(tmp_path):
    write_backbone_runs(tmp_path, TWO_BACKBONES)
    records = sel.run_records([str(tmp_path)])
    glyphs = "[demo_small_resnet_glyphs]"
    assert {r.method for r in records} == {
        f"erm {glyphs}",
        "erm [demo_small_resnet_letters]",
        f"very_large_dropout {glyphs} (p=0.5)",  # The backbone's name, then the rate's.
        f"very_large_dropout {glyphs} (p=0.9)",
        "very_large_dropout [demo_small_resnet_letters]",  # One rate on that backbone.
        "erm_scratch",  # One backbone (none): its name as the rows'.
        "very_large_dropout_scratch",
    }
    labels = {"": "from scratch", "e3" * 32: glyphs[1:-1], "e6" * 32: "demo_small_resnet_letters"}
    for r in records:
        backbone = "" if "scratch" in r.method else ("e3" if "glyphs" in r.method else "e6") * 32
        assert (r.backbone, r.backbone_label) == (backbone, labels[backbone]), r


def test_selection_never_picks_a_run_of_another_backbone(tmp_path):
    write_backbone_runs(tmp_path, TWO_BACKBONES)
    records = sel.run_records([str(tmp_path)])
    for selection in sel.SELECTIONS:
        agg = sel.aggregate(records, selection)
        for test in DOMAINS:
            for backbone, name in ((GLYPHS, "glyphs"), (LETTERS, "letters")):
                cell = agg[("toy", f"erm [demo_small_resnet_{name}]", test)]
                # Training-domain validation: lr 0.1 validates better on both backbones (and
                # letters' better than glyphs'). Oracle: the test domains' out splits tie (0.5),
                # the last run read wins: lr 0.1's (lr0.01/ sorts before lr0.1/).
                want = [backbone_values(backbone, 0.0, 0.1, test, s) for s in (0, 1)]
                assert cell["ood"] == pytest.approx([w[1] for w in want]), (selection, name)
                assert cell["id"] == pytest.approx([w[0] for w in want])
    text = report.markdown(records)
    glyphs_a = np.mean([backbone_values(GLYPHS, 0.0, 0.1, "a", s)[1] for s in (0, 1)])
    assert f"| erm [demo_small_resnet_glyphs] | 2 | {100 * glyphs_a:.1f} ± " in text
    assert "| erm | " not in text  # Never one row over both backbones.


def test_one_pretrained_curve_per_backbone_with_its_own_numbers(tmp_path):
    write_backbone_runs(tmp_path, TWO_BACKBONES)
    records = sel.run_records([str(tmp_path)])
    curves = report_figures.rate_curves(records, "toy")
    assert list(curves) == [
        "pretrained (demo_small_resnet_glyphs)",
        "pretrained (demo_small_resnet_letters)",
        "from scratch",
    ]
    rates = {"glyphs": [0.0, 0.5, 0.9], "letters": [0.0, 0.9], "scratch": [0.0, 0.9]}
    for (label, curve), backbone, name in zip(
        curves.items(), (GLYPHS, LETTERS, SCRATCH), rates, strict=True
    ):
        assert list(curve) == rates[name], label
        for rate, v in curve.items():
            # lr 0.1 validates better everywhere; per seed the mean over the test domains.
            per_seed = np.array(
                [[backbone_values(backbone, rate, 0.1, t, s) for t in DOMAINS] for s in (0, 1)]
            ).mean(axis=1)
            for k, key in ((0, "id"), (1, "ood")):
                assert v[key][0] == pytest.approx(per_seed[:, k].mean()), (label, rate, key)
                assert v[key][1] == pytest.approx(np.std(per_seed[:, k]) / math.sqrt(2))
            assert v["seeds"] == 2 and v["test_domains"] == list(DOMAINS)
    with pytest.raises(ValueError, match="several backbones"):
        report_figures.rate_curve(records, "toy")  # Never pooled.
    text = report.markdown(records)
    for label in curves:
        assert f"**toy, {label}, accuracy against the penultimate dropout rate**" in text
    letters = curves["pretrained (demo_small_resnet_letters)"][0.9]["ood"]
    assert f"| 0.9 | 2 | 3 | {100 * letters[0]:.1f} ± {100 * letters[1]:.1f} |" in text


def test_one_backbone_reports_as_before(tmp_path):
    """Runs of one backbone (and scratch runs) give the tables and curves the same runs give
    without any backbone recorded: names and labels unchanged."""
    spec = [s for s in TWO_BACKBONES if s[0] is not LETTERS]
    write_backbone_runs(tmp_path / "with", spec)
    for backbone, method, rate in spec:  # The same runs, no backbone in their config.json.
        for lr in (0.1, 0.01):
            for test in DOMAINS:
                for seed in (0, 1):
                    v = backbone_values(backbone, rate, lr, test, seed)
                    write_run(tmp_path / "without", method, rate, lr, test, seed, *v)
    records = sel.run_records([str(tmp_path / "with")])
    assert {r.method for r in records} == {
        "erm",
        "very_large_dropout (p=0.5)",
        "very_large_dropout (p=0.9)",
        "erm_scratch",
        "very_large_dropout_scratch",
    }
    curves = report_figures.rate_curves(records, "toy")
    assert list(curves) == ["pretrained", "from scratch"]
    assert curves["pretrained"][0.5]["ood"][0] == pytest.approx(
        np.mean([backbone_values(GLYPHS, 0.5, 0.1, t, s)[1] for t in DOMAINS for s in (0, 1)])
    )
    without = sel.run_records([str(tmp_path / "without")])
    assert {r.backbone for r in without} == {""}
    assert report.markdown(records) == report.markdown(without)
    assert report_figures.rate_curves(without, "toy") == curves


def test_backbone_labels_from_file_names(tmp_path):
    """A label is the file's stem (a directory's name); two backbones of one stem add their
    sha256's first 8 digits; one backbone read from two paths takes the first stem."""
    other = {"path": "/y/demo_small_resnet_glyphs.msgpack", "sha256": "0a" * 32}
    moved = {"path": "/tmp/rich/glyphs10k/glyphs10k.msgpack", "sha256": GLYPHS["sha256"]}
    folder = {"path": "~/.cache/richft_jax/demo_pretrain_small_resnet/"}
    for i, pretrained in enumerate((GLYPHS, other, moved, folder)):
        write_run(tmp_path, "erm", 0.0, 0.1, "a", i, *values(0, 0.0, 0.1, "a", i), pretrained)
    records = sel.run_records([str(tmp_path)])
    by_seed = {r.trial_seed: (r.backbone, r.method) for r in records}
    assert by_seed == {
        0: (GLYPHS["sha256"], f"erm [demo_small_resnet_glyphs@{'e3' * 4}]"),
        1: (other["sha256"], "erm [demo_small_resnet_glyphs@0a0a0a0a]"),
        2: (GLYPHS["sha256"], f"erm [demo_small_resnet_glyphs@{'e3' * 4}]"),  # One backbone.
        3: (folder["path"], "erm [demo_pretrain_small_resnet]"),  # No sha256: the path.
    }
