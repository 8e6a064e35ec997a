"""The readers on a bucket: report, the run builder, pretrained weights, linear_regime's inputs
and figures, the sweep; each keeps a gs:// URL a URL (asks for gs://bucket/run/..., never
creates ./gs:), against an in-memory gs:// (tests/memory_gs.py). Orbax checkpoints on a real
(emulated) bucket: tests/test_gcs.py."""

import importlib.util
import io
import json
import pathlib

import ml_collections
import numpy as np
import pytest
from etils import epath
from memory_gs import memory_gs

from richft_jax import paths, report, results, run
from richft_jax import selection as sel
from richft_jax.models import hub
from richft_jax.models import pretrained as published


def _launch_module(name: str):
    """launch/NAME.py, imported (launch/ is scripts, not a package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "launch" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _launch_module("sweep")
to_domainbed = _launch_module("to_domainbed")


@pytest.fixture
def gs(monkeypatch, tmp_path):
    """gs:// in memory, the test run from an empty folder; afterwards nothing named "gs:" (or
    "gcs:") may be in it."""
    monkeypatch.chdir(tmp_path)
    with memory_gs(monkeypatch) as fs:
        yield fs
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(":")) == []


def rows(method: str, test: str, trial_seed: int, accuracies: dict) -> list[dict]:
    """Rows of a 2-domain dataset "toy": {step: (ID out, OOD in, OOD out)}."""
    train = "b" if test == "a" else "a"
    out = []
    for step, (id_acc, ood_in, ood_out) in accuracies.items():
        base = {
            "step": step,
            "method": method,
            "trial_seed": trial_seed,
            "seed": 0,
            "test_domains": [test],
            "dataset": "toy",
        }
        out += [
            {**base, "domain": train, "split": "out", "is_test_domain": False, "accuracy": id_acc},
            {**base, "domain": train, "split": "in", "is_test_domain": False, "accuracy": 1.0},
            {**base, "domain": test, "split": "in", "is_test_domain": True, "accuracy": ood_in},
            {**base, "domain": test, "split": "out", "is_test_domain": True, "accuracy": ood_out},
        ]
    return out


def jsonl(rs: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rs)


SWEEP = {  # run name: (method, trial seed, lr, {step: accuracies})
    "erm/lr1/seed0": ("erm", 0, 0.1, {1: (0.5, 0.3, 0.8), 2: (0.6, 0.4, 0.2)}),
    "erm/lr2/seed0": ("erm", 0, 0.01, {1: (0.7, 0.1, 0.1), 2: (0.9, 0.2, 0.3)}),
    "erm/lr1/seed1": ("erm", 1, 0.1, {1: (0.8, 0.5, 0.5), 2: (0.8, 0.7, 0.6)}),
    "vld/lr1/seed0": ("very_large_dropout", 0, 0.1, {1: (0.6, 0.6, 0.4), 2: (0.7, 0.8, 0.9)}),
}


def write_sweep(root: epath.Path, rounds: bool) -> None:
    """SWEEP under `root`, each run with its config.json; its rows in results.jsonl, or (as a
    run on a bucket writes them) one round object per step under results.jsonl.d/; a
    checkpoint folder beside them."""
    for name, (method, seed, lr, accuracies) in SWEEP.items():
        run_dir = root / name
        run_dir.mkdir(parents=True, exist_ok=True)
        config = {"method": method, "optim": {"lr": lr, "weight_decay": 0.0}}
        (run_dir / "config.json").write_text(json.dumps(config))
        all_rows = rows(method, "a", seed, accuracies)
        if rounds:
            for step in accuracies:
                text = jsonl([r for r in all_rows if r["step"] == step])
                (run_dir / results.ROUNDS).mkdir(parents=True, exist_ok=True)
                (run_dir / results.ROUNDS / f"{step:08d}-0000abcd.jsonl").write_text(text)
        else:
            (run_dir / results.RESULTS).write_text(jsonl(all_rows))
        (run_dir / "checkpoints" / "2" / "state").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "2" / "state" / "x").write_text("array bytes")


def test_paths_expand_keeps_urls_and_sorts_matches(gs):
    for name in ("sweep/b/seed0/config.json", "sweep/a/seed0/config.json", "sweep/a/x.txt"):
        epath.Path(f"gs://bucket/{name}").write_text("{}")
    assert [str(p) for p in paths.expand("gs://bucket/sweep/*/seed0")] == [
        "gs://bucket/sweep/a/seed0",
        "gs://bucket/sweep/b/seed0",
    ]
    assert [str(p) for p in paths.expand("gs://bucket/sweep")] == ["gs://bucket/sweep"]
    assert paths.expand("gs://bucket/nothing/*") == []
    assert sorted(gs.store) == [
        "bucket/sweep/a/seed0/config.json",
        "bucket/sweep/a/x.txt",
        "bucket/sweep/b/seed0/config.json",
    ]


def test_report_reads_round_objects_on_a_bucket_as_files_on_disk(gs, tmp_path, monkeypatch):
    write_sweep(epath.Path(tmp_path / "local"), rounds=False)
    write_sweep(epath.Path("gs://bucket/sweep"), rounds=True)
    listed = []
    ls = gs.ls
    monkeypatch.setattr(
        gs, "ls", lambda self, path, **kw: listed.append(path) or ls(self, path, **kw)
    )
    local = report.write_report([str(tmp_path / "local")], str(tmp_path / "out"))
    remote = report.write_report(["gs://bucket/sweep"], "gs://bucket/report")
    assert remote == local
    assert "erm" in local and "very_large_dropout" in local
    records = sel.run_records(["gs://bucket/sweep"])
    assert [r.path for r in records] == [f"gs://bucket/sweep/{n}" for n in sorted(SWEEP)]
    assert {r.setting for r in records} == {("0.1", "0.0"), ("0.01", "0.0")}
    assert "gs://bucket/sweep/erm/lr1/seed0" in listed  # Listed, but not its checkpoints:
    assert not any("checkpoints" in p for p in listed)
    out = epath.Path("gs://bucket/report")
    assert (out / "tables.md").read_text() == local
    assert (out / "results.csv").read_text() == (tmp_path / "out" / "results.csv").read_text()
    assert (out / "id_vs_ood.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "out").iterdir()
    )


def test_report_expands_a_quoted_glob_on_a_bucket(gs):
    write_sweep(epath.Path("gs://bucket/sweep"), rounds=True)
    records = sel.run_records(["gs://bucket/sweep/erm/*/seed0"])
    assert [r.path for r in records] == [
        "gs://bucket/sweep/erm/lr1/seed0",
        "gs://bucket/sweep/erm/lr2/seed0",
    ]
    with pytest.raises(FileNotFoundError, match=r"No results.jsonl under \['gs://bucket/none/\*'"):
        report.write_report(["gs://bucket/none/*"])


def test_to_domainbed_reads_and_writes_a_bucket(gs, tmp_path):
    write_sweep(epath.Path("gs://bucket/sweep"), rounds=True)
    write_sweep(epath.Path(tmp_path / "local"), rounds=False)
    remote = to_domainbed.convert(["gs://bucket/sweep"], "gs://bucket/domainbed")
    local = to_domainbed.convert([str(tmp_path / "local")], str(tmp_path / "domainbed"))
    assert [str(p.parent) for p in remote] == ["gs://bucket/domainbed"] * len(SWEEP)
    assert [p.name for p in remote] == [p.name for p in local]
    for remote_dir, local_dir, name in zip(remote, local, sorted(SWEEP), strict=True):
        lines = [json.loads(x) for x in (remote_dir / "results.jsonl").read_text().splitlines()]
        assert {x["args"].pop("output_dir") for x in lines} == {f"gs://bucket/sweep/{name}"}
        expected = [json.loads(x) for x in (local_dir / "results.jsonl").read_text().splitlines()]
        assert [x["args"].pop("output_dir") for x in expected][0].endswith(f"local/{name}")
        assert lines == expected and lines[0]["hparams"]["optim"]["lr"] == SWEEP[name][2]
        assert (remote_dir / "done").read_text() == "done"


def test_the_run_builder_keeps_a_bucket_run_a_url(gs, monkeypatch):
    root = epath.Path("gs://bucket/run")
    (root / "config.json").write_text(json.dumps({"method": "erm", "seed": 3}))
    for step in ("4", "7"):
        (root / "checkpoints" / step / "state").mkdir(parents=True, exist_ok=True)
        (root / "checkpoints" / step / "state" / "_METADATA").write_text("{}")
    assert run.read_config("gs://bucket/run").seed == 3
    run_dir, step_dir = run.checkpoint_dirs("gs://bucket/run/checkpoints/4")
    assert (str(run_dir), str(step_dir)) == ("gs://bucket/run", "gs://bucket/run/checkpoints/4")
    asked = []
    tree = {"params": {"w": np.ones(2)}, "batch_stats": {}}
    monkeypatch.setattr(run.checkpoints, "restore_state_tree", lambda d: asked.append(d) or tree)
    config, variables, step = run.restore("gs://bucket/run/checkpoints/7")
    assert (config.method, step, str(asked[-1])) == ("erm", 7, "gs://bucket/run/checkpoints/7")
    with pytest.raises(FileNotFoundError, match="gs://bucket/other has no config.json"):
        run.read_config("gs://bucket/other")


def test_a_bucket_pretrained_path_is_kept_and_missing_named(gs):
    config = ml_collections.ConfigDict({"pretrained": {"path": "gs://bucket/backbone"}})
    assert str(run.resolve_pretrained(config)) == "gs://bucket/backbone"
    with pytest.raises(FileNotFoundError, match="no pretrained checkpoint at gs://bucket/backbone"):
        run.pretrained_checkpoint("gs://bucket/backbone")
    assert gs.store == {}  # Only looked: nothing written.


def test_published_weights_read_from_a_bucket(gs, tmp_path):
    from safetensors.numpy import save

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    epath.Path("gs://bucket/w/vit.npz").write_bytes(buffer.getvalue())
    epath.Path("gs://bucket/w/resnet.safetensors").write_bytes(save(arrays))
    for name, fmt in (
        ("vit.npz", "big_vision_npz"),
        ("resnet.safetensors", "torchvision_safetensors"),
    ):
        assert published.detect_format(f"gs://bucket/w/{name}") == fmt
        got = published.read_flat(f"gs://bucket/w/{name}", fmt)
        assert sorted(got) == ["a", "b"]
        np.testing.assert_array_equal(got["a"], arrays["a"])
        np.testing.assert_array_equal(got["b"], arrays["b"])
    with pytest.raises(FileNotFoundError, match="gs://bucket/w/none.npz: no such file"):
        published.read_flat("gs://bucket/w/none.npz", "big_vision_npz")


def test_the_weights_cache_is_local_only(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RICHFT_CACHE", "gs://bucket/cache")
    with pytest.raises(ValueError, match=r"RICHFT_CACHE='gs://bucket/cache'.*local disk only"):
        hub.cache_file("resnet50")
    assert list(tmp_path.iterdir()) == []


def test_linear_regime_runs_and_figures_on_a_bucket(gs):
    pytest.importorskip("matplotlib")
    from richft_jax.analysis import plots, regime

    for name in ("erm", "vld", "vld2"):
        epath.Path(f"gs://bucket/sweep/{name}/config.json").write_text("{}")
    runs = regime.expand_runs(["gs://bucket/sweep/vld*", "gs://bucket/sweep/erm"])
    assert [str(r) for r in runs] == [
        "gs://bucket/sweep/vld",
        "gs://bucket/sweep/vld2",
        "gs://bucket/sweep/erm",
    ]
    with pytest.raises(FileNotFoundError, match=r"--runs: 'gs://bucket/sweep/x\*' matches no"):
        regime.expand_runs(["gs://bucket/sweep/x*"])
    assert regime._resolved("gs://bucket/backbone") == "gs://bucket/backbone"
    fig = plots.plt.figure()
    png = plots.save(fig, {"x": [1, 2]}, "gs://bucket/analysis/figure")
    assert str(png) == "gs://bucket/analysis/figure.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert json.loads(epath.Path("gs://bucket/analysis/figure.json").read_text()) == {"x": [1, 2]}


def test_the_sweep_puts_workdirs_in_the_bucket_and_skips_finished_runs(gs, monkeypatch, capsys):
    [(workdir, cmd)] = sweep.expand(["demo"], {"dropout_rate": ["0.5"]}, [1], "gs://bucket/s")
    assert str(workdir) == "gs://bucket/s/demo/dropout_rate=0.5/seed1"
    assert "--workdir=gs://bucket/s/demo/dropout_rate=0.5/seed1" in cmd
    (workdir / results.SUMMARY).write_text("{}")
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda c, **kw: calls.append(c))
    sweep.run_sweep("gs://bucket/s", ["demo"], {"dropout_rate": ["0.5"]}, [1])
    assert calls == [] and "skip (finished): gs://bucket/s/demo" in capsys.readouterr().out
    [(relative, _)] = sweep.expand(["demo"], {}, [0], "workdirs/s")
    assert str(relative) == "workdirs/s/demo/seed0"  # Printed commands run elsewhere.
    with pytest.raises(ValueError, match="--out='https://host/s': https:// is not a storage"):
        sweep.expand(["demo"], {}, [0], "https://host/s")
