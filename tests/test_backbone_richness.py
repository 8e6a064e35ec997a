"""The backbone-richness record on a real tiny pretraining and two tiny fine-tuning runs from it
(ERM and dropout 0.9): each part equals what the function it reuses returns for the same
inputs, a missing input leaves its part out, and a run that is missing, not a run, or
fine-tuned from another backbone is refused by name."""

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from richft_jax import config_lib, results, train
from richft_jax.analysis import backbone_richness, regime, richness
from richft_jax.configs import demo_pretrain

MAX = 64  # Examples per split for the runs' evaluations and the Taylor / distortion part.
C_GRID = (0.01, 1.0)  # Two C values: the probes' grid here (the demo's has ten).
DOMAINS = {"mnist", "mnist_m", "digits", "syn"}
REPO = pathlib.Path(__file__).resolve().parent.parent


def finetune_config(data_dir, pretrained, dropout_rate):
    """The tiny demo fine-tuned from `pretrained` at this dropout rate."""
    c = config_lib.load_config_file("demo:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = str(pretrained)
    c.dropout_rate = dropout_rate
    c.method = "erm" if dropout_rate == 0 else "very_large_dropout"
    c.data.eval_max_examples, c.data.eval_batch_size = MAX, 64
    return c


def probe_config(data_dir):
    """The probes' tiny digits config: the tiny demo with a two-value C grid."""
    c = config_lib.load_config_file("demo:tiny")
    c.data.data_dir = str(data_dir)
    c.lp_c_grid = C_GRID
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir, pretraining_data_dir):
    root = tmp_path_factory.mktemp("richness")
    pre = root / "pretrain"  # A real tiny letters pretraining: summary.json, results, weights.
    c = config_lib.load_config_file("demo_pretrain:tiny")
    c.data.data_dir = str(pretraining_data_dir)
    train.train_and_evaluate(c, str(pre))
    runs = {}
    for name, rate in (("erm", 0.0), ("dropout", 0.9)):
        runs[name] = root / name
        train.train_and_evaluate(finetune_config(data_dir, pre, rate), str(runs[name]))
    return {"root": root, "pre": pre, "runs": runs, "data_dir": data_dir}


def spy(monkeypatch, module, name: str) -> list[tuple[tuple, dict, object]]:
    """Records (args, kwargs, returned) of every call of module.name, which still runs."""
    calls, real = [], getattr(module, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs, real(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(module, name, recorded)
    return calls


def test_every_part_is_what_its_function_measures(env, monkeypatch):
    """Each part is what the function it reuses returned, called with the record's inputs (each
    function's own tests check what it computes)."""
    probed = spy(monkeypatch, richness, "linear_probes")
    taylors = spy(monkeypatch, regime, "taylor")
    distortions = spy(monkeypatch, regime, "distortion")
    runs = [str(env["runs"]["erm"]), str(env["runs"]["dropout"])]
    record = richness.measure(
        str(env["pre"]), runs, config=probe_config(env["data_dir"]), max_examples=MAX
    )
    assert record["omitted"] == {}
    assert record["backbone"]["sha256"] is None  # A run directory, not a file.
    want_model = config_lib.load_config_file("demo_pretrain:tiny").model
    assert record["backbone"]["model"]["kwargs"]["feature_dim"] == want_model.kwargs.feature_dim
    # Letters: the pretraining's own last evaluation (test domain = the letters test split).
    summary = json.loads((env["pre"] / "summary.json").read_text())
    letters = record["letters"]
    assert letters["letters_test_accuracy"] == summary["last"]["ood_accuracy"]
    assert 0 <= letters["letters_test_accuracy"] <= 1
    assert letters["step"] == 30 and {r["domain"] for r in letters["rows"]} == {"train", "test"}
    # Probes: per digits domain, what linear_probes returned for the backbone and the config.
    probes = record["linear_probe"]
    [(args, kwargs, again)] = probed
    backbone, data_dir, config, model = args
    assert (backbone, data_dir, kwargs) == (env["pre"], None, {})
    assert model == record["backbone"]["model"]
    assert config.pretrained.path == str(env["pre"])
    assert config.data.data_dir == str(env["data_dir"]) and config.lp_c_grid == C_GRID
    assert probes["domains"] == again and set(again) == DOMAINS
    assert probes["c_grid"] == list(C_GRID)
    for v in again.values():
        assert 0 <= v["test_accuracy"] <= 1 and 0 <= v["id_validation_accuracy"] <= 1
        assert v["c"] in C_GRID
    tests = [v["test_accuracy"] for v in again.values()]
    assert probes["mean_test_accuracy"] == pytest.approx(np.mean(tests))
    # Runs: the Taylor summary and the distortion analysis.regime measures, per run in order.
    assert [r["run"] for r in record["runs"]] == runs
    assert len(taylors) == len(distortions) == len(runs)
    for got, (t_args, _, taylor), (d_args, _, distortion) in zip(
        record["runs"], taylors, distortions, strict=True
    ):
        run, _, max_examples = t_args
        assert str(run.path) == got["run"] and d_args == (run, MAX) and max_examples == MAX
        selected = json.loads((pathlib.Path(got["run"]) / "summary.json").read_text())["selected"]
        assert run.step == selected["step"] == got["step"]  # The best checkpoint (which="best").
        want = regime.summarize(taylor, run.step)
        assert got["taylor"] == want
        assert 0 <= want["agreement"]["id"] <= 1 and 0 <= want["agreement"]["ood"] <= 1
        logged = results.read_rows(got["run"])
        ood = [r["accuracy"] for r in logged if r["step"] == run.step and results.is_ood(r)]
        assert want["network_accuracy"]["ood"] == pytest.approx(np.mean(ood), abs=1e-6)
        assert got["feature_distortion"] == distortion
    erm, drop = record["runs"]
    assert (erm["dropout_rate"], drop["dropout_rate"]) == (0.0, 0.9)
    delta = record["erm_vs_dropout"]["dropout_minus_erm"]
    for split in ("id", "ood"):
        want = drop["taylor"]["agreement"][split] - erm["taylor"]["agreement"][split]
        assert delta["taylor_agreement"][split] == pytest.approx(want)
        want = (
            drop["feature_distortion"][split]["relative_l2"]
            - erm["feature_distortion"][split]["relative_l2"]
        )
        assert delta["relative_l2"][split] == pytest.approx(want)
        assert erm["feature_distortion"][split]["relative_l2"] > 0  # Fine-tuning moved them.


def test_a_missing_input_leaves_its_part_out(env, tmp_path):
    record = richness.measure(str(env["pre"]), probe=False)
    assert "linear_probe" not in record and "runs" not in record
    assert "erm_vs_dropout" not in record
    assert set(record["omitted"]) == {"linear_probe", "runs"}
    assert record["letters"]["letters_test_accuracy"] >= 0
    # A pretraining directory without its summary: no letters accuracy, and it says why.
    bare = tmp_path / "bare"
    shutil.copytree(env["pre"], bare)
    (bare / "summary.json").unlink()
    record = richness.measure(str(bare), probe=False)
    assert "letters" not in record and "summary.json" in record["omitted"]["letters"]
    # One run only: no ERM-vs-dropout comparison, and the record says why.
    record = richness.measure(
        str(env["pre"]), [str(env["runs"]["erm"])], probe=False, max_examples=MAX
    )
    assert len(record["runs"]) == 1 and "erm_vs_dropout" not in record
    assert "1 ERM and 0 dropout" in record["omitted"]["erm_vs_dropout"]


def test_bad_inputs_are_refused_naming_them(env, tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        richness.measure(str(env["pre"]), [str(missing)], probe=False)
    with pytest.raises(FileNotFoundError, match="no_such_backbone"):
        richness.measure(str(tmp_path / "no_such_backbone"), probe=False)
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{not_a_run} has no config.json"):
        richness.measure(str(env["pre"]), [str(not_a_run)], probe=False)
    # A run fine-tuned from another backbone: its θ0 is not this one, so it is refused.
    with pytest.raises(ValueError, match=f"{env['runs']['erm']} was fine-tuned from"):
        richness.measure("shipped", [str(env["runs"]["erm"])], probe=False)


def load_pin_backbone():
    """launch/pin_backbone.py, imported (launch/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("pin_backbone", REPO / "launch/pin_backbone.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pinned_file_reads_its_record_and_the_cli_writes_the_record(env, tmp_path, capsys):
    pinned = tmp_path / "assets" / "tiny.msgpack"
    pin = load_pin_backbone()
    pin.main([f"--pretrained={env['pre']}", f"--out={pinned}", "--commit=" + "0" * 40])
    pinned_record = json.loads(pinned.with_suffix(".json").read_text())
    accuracy = pinned_record["quality"]["letters_test_accuracy"]
    assert f"letters test accuracy {accuracy:.4f}" in capsys.readouterr().out.splitlines()
    # The record's command remakes the run's config: its config and the one override it had.
    data_dir = json.loads((env["pre"] / "config.json").read_text())["data"]["data_dir"]
    assert pinned_record["made_by"]["pretrain_command"] == (
        f"python -m richft_jax.main --config=demo_pretrain:tiny --workdir={env['pre']} "
        f"--config.data.data_dir={data_dir}"
    )
    fv = flags.FlagValues()
    backbone_richness.define_flags(fv)
    out = tmp_path / "out" / "richness.json"
    fv([__file__, f"--backbone={pinned}", f"--out={out}", "--noprobe"])
    returned = backbone_richness.measure_flags(fv)
    record = json.loads(out.read_text())
    assert record == json.loads(json.dumps(returned))
    assert record["backbone"]["sha256"] == richness.hub.file_sha256(pinned)
    from_dir = richness.measure(str(env["pre"]), probe=False)
    assert record["backbone"]["model"] == from_dir["backbone"]["model"]
    for key in ("letters_test_accuracy", "letters_validation_accuracy", "step", "rows"):
        assert record["letters"][key] == from_dir["letters"][key]
    # The runs were fine-tuned from the directory, not from this file: refused.
    with pytest.raises(ValueError, match="not from the backbone measured"):
        richness.measure(str(pinned), [str(env["runs"]["erm"])], probe=False)


def test_the_pinned_command_names_every_override_of_the_run(tmp_path):
    pin = load_pin_backbone()
    shipped = json.loads(
        pathlib.Path(demo_pretrain.shipped_backbone()).with_suffix(".json").read_text()
    )
    config = shipped["made_by"]["pretrain_config"]
    spec = pin.config_spec(config["config_name"])
    assert spec == demo_pretrain.SHIPPED_CONFIG == "demo_pretrain:glyphs"
    assert pin.config_spec("demo_pretrain_glyphs_tiny") == "demo_pretrain:glyphs,tiny"
    assert pin.config_spec("demo_pretrain") == "demo_pretrain"
    assert pin.overrides(spec, config) == []  # The shipped one: the config as is.
    accuracy = shipped["quality"]["letters_test_accuracy"]  # The source's, glyphs here.
    assert pin.accuracy_line(shipped) == f"glyphs test accuracy {accuracy:.4f}"
    longer = {**config, "num_steps": 6000, "optim": {**config["optim"], "decay_at": [0.3, 0.6]}}
    assert pin.overrides(spec, longer) == [
        "--config.num_steps=6000",
        "--config.optim.decay_at=0.3,0.6",
    ]
    assert "--config.data.name=letters" in pin.overrides(
        spec, {**config, "data": {**config["data"], "name": "letters"}}
    )
    with pytest.raises(ValueError, match="--config=demo_pretrain:glyphs has no key nope"):
        pin.overrides(spec, {**config, "nope": 1})


def test_shipped_names_the_demos_file():
    path = richness.backbone_path(richness.SHIPPED)
    assert str(path) == demo_pretrain.shipped_backbone()
    assert richness.architecture(path)["kwargs"]["feature_dim"] == 512
    letters, source = richness.letters_of(path)
    assert 0.5 < letters["letters_test_accuracy"] <= 1 and source.endswith(".json")


def test_the_command_line_lists_and_requires_its_flags():
    module = ["-m", "richft_jax.analysis.backbone_richness"]
    help_out = subprocess.run(
        [sys.executable, *module, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert help_out.returncode in (0, 1), help_out.stderr  # absl's --help exits 1.
    listed = help_out.stdout.split("\nflags:\n", 1)[-1]
    for flag in ("--backbone", "--runs", "--out", "--[no]probe", "--config", "--c_grid"):
        assert f"  {flag}:" in listed, (flag, help_out.stdout)
    missing = subprocess.run(
        [sys.executable, *module, "--out=/nonexistent/r.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "Flag --backbone must have a value" in missing.stderr
