"""launch/compare_backbones.py: the backbone table is the means of the records it reads."""

import importlib.util
import json
import pathlib

import pytest

spec = importlib.util.spec_from_file_location(
    "compare_backbones",
    pathlib.Path(__file__).resolve().parents[1] / "launch" / "compare_backbones.py",
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def run_record(rate, agreement, l2):
    split = {"relative_l2": l2, "cka": 0.5, "cosine": 0.9}
    return {
        "dropout_rate": rate,
        "taylor": {"agreement": {"id": agreement, "ood": agreement - 0.1}},
        "feature_distortion": {"id": split, "ood": split},
    }


def test_the_table_averages_each_backbones_records(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    probe = {"mean_test_accuracy": 0.7, "mean_id_validation_accuracy": 0.9}
    probe["domains"] = {"syn": {"test_accuracy": 0.6}}
    (a / "probes.json").write_text(
        json.dumps({"letters": {"letters_test_accuracy": 0.92}, "linear_probe": probe})
    )
    for d, agreement in (("mnist", 0.8), ("syn", 0.6)):
        runs = [run_record(0.0, agreement, 0.4), run_record(0.9, agreement - 0.2, 0.7)]
        (a / f"richness_seed0_{d}.json").write_text(json.dumps({"runs": runs}))
    b = tmp_path / "b"
    b.mkdir()  # No records: every cell "–".
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[1:]
        for line in compare.table([a, b]).splitlines()[2:]
    }
    assert rows["source task test accuracy"] == ["0.920", "– |"]
    assert rows["linear probe, OOD syn"][0] == "0.600"
    assert rows["linear probe, OOD mnist"][0] == "–"
    assert rows["ERM: Taylor-model agreement, ID"][0] == "0.700"  # (0.8 + 0.6) / 2
    assert rows["dropout: Taylor-model agreement, OOD"][0] == "0.400"
    assert rows["dropout: feature distortion (relative L2 from θ0), ID"][0] == "0.700"


def test_a_missing_directory_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main([str(tmp_path / "nope")])
    assert f"{tmp_path / 'nope'} is not a directory of backbone records" in capsys.readouterr().err
