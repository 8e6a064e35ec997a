"""The benchmark runs end to end and reports every number it promises (no speed asserted)."""

import json

from richft_jax import benchmark


def test_benchmark_reports_all_measurements(tmp_path, data_dir):
    out = tmp_path / "bench.json"
    args = ["--batch", "24", "--steps", "2", "--k", "2", "--out", str(out)]
    rows = benchmark.main(args + ["--data_dir", str(data_dir)])
    row = rows[0]
    for key in (
        "train_images_per_s_dropout0.0",
        "train_images_per_s_dropout0.9",
        "input_images_per_s",
        "peak_gflops_per_s",
        "ensemble2_over_2_singles",
        "ensemble2_over_2_singles_one_per_pass",
    ):
        assert row[key] > 0, key
    assert row["train_step_gflops"] > 0.01  # XLA's cost analysis counted the convolutions.
    assert 0 < row["mfu"] < 1.5
    assert json.loads(out.read_text())[0]["model"] == "small_resnet"
