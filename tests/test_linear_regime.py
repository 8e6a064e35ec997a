"""Linear-regime analyses on tiny real runs: θ0 is the run's true initial state, Taylor
measurements and interpolation endpoints match the run's own evaluations, linear fine-tuning
learns, and the CLI writes every figure with its numbers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from richft_jax import checkpoints, config_lib, results, train
from richft_jax.analysis import interpolation, linear_finetune, linear_regime, regime
from richft_jax.models import registry

MAX = 64  # Examples per split, for the runs' evaluations and the analyses alike.


def make_pretrained(path, config) -> dict:
    """A stand-in pretrained checkpoint (random backbone, 52-class head): no letters build."""
    model = registry.build_classifier(config.model, 52)
    v = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)), train=False)
    tree = {"params": v["params"], "batch_stats": v["batch_stats"]}
    mngr = checkpoints.manager(path / checkpoints.LATEST)
    checkpoints.save(mngr, 1, tree)
    mngr.wait_until_finished()
    mngr.close()
    return jax.device_get(tree)


def tiny_config(data_dir, pretrained, **overrides):
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = str(pretrained)
    c.data.eval_max_examples = MAX
    c.data.eval_batch_size = 64
    c.keep_checkpoints = 3
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("linear_regime")
    config = config_lib.load_config_file("configs/demo.py:tiny")
    pre = make_pretrained(root / "pretrained", config)
    run = root / "run"
    train.train_and_evaluate(tiny_config(data_dir, root / "pretrained"), str(run))
    frozen = root / "frozen"  # lr 0: the run never leaves its initial state θ0.
    train.train_and_evaluate(
        tiny_config(data_dir, root / "pretrained", **{"optim.lr": 0.0, "num_steps": 2}),
        str(frozen),
    )
    return {"root": root, "run": run, "frozen": frozen, "pre": pre, "data_dir": data_dir}


def leaves_close(a, b, **kw):
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **kw)


def test_theta0_is_the_runs_initial_state(env):
    run = regime.load(str(env["frozen"]))
    # The run's state after 2 steps at lr 0 is its initial state: θ0 rebuilt must equal it.
    leaves_close(run.v0["params"], run.v_ft["params"], rtol=0, atol=0)
    leaves_close(run.v0["batch_stats"], run.v_ft["batch_stats"], rtol=0, atol=0)
    leaves_close(run.v0["params"]["backbone"], env["pre"]["params"]["backbone"], rtol=0, atol=0)
    assert float(np.abs(run.v0["params"]["head"]["kernel"]).max()) > 0  # Default init, not 0.


def test_taylor_measurements_match_the_runs_evaluation(env):
    run = regime.load(str(env["run"]))
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    at_theta0 = regime.taylor(run, mesh, MAX, v=run.v0)
    assert len(at_theta0) == 8
    for r in at_theta0:
        assert r["agreement"] == 1.0 and r["num_examples"] == MAX
        assert r["logits_relative_distance"] < 1e-5 and r["features_relative_distance"] < 1e-5
    rows = regime.taylor(run, mesh, MAX)
    logged = {
        (r["domain"], r["split"]): r["accuracy"]
        for r in results.read_rows(env["run"])
        if r["step"] == run.step
    }
    for r in rows:  # The network side is the run's own evaluation of that checkpoint.
        assert r["network_accuracy"] == pytest.approx(logged[(r["domain"], r["split"])], abs=1e-6)
        assert 0.0 <= r["agreement"] <= 1.0 and r["logits_relative_distance"] > 0
    traj = regime.trajectory(run, mesh, MAX)
    assert [p["step"] for p in traj] == [0, 10, 20]
    assert traj[0]["agreement"] == {"id": 1.0, "ood": 1.0}


def test_interpolation_endpoints_are_the_two_networks(env):
    run = regime.load(str(env["run"]))
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    rows = regime.interpolate(run, [0.0, 0.5, 1.0], mesh, MAX)
    acc = {(r["kind"], r["alpha"], r["domain"], r["split"]): r["accuracy"] for r in rows}
    theta0 = {
        (r["domain"], r["split"]): r["taylor_accuracy"]
        for r in regime.taylor(run, mesh, MAX, v=run.v0)
    }
    logged = {
        (r["domain"], r["split"]): r["accuracy"]
        for r in results.read_rows(env["run"])
        if r["step"] == run.step
    }
    for kind in interpolation.KINDS:
        for key, value in logged.items():
            assert acc[(kind, 0.0, *key)] == pytest.approx(value, abs=1e-6)  # α=0: θ_ft.
            assert acc[(kind, 1.0, *key)] == pytest.approx(theta0[key], abs=1e-6)  # α=1: θ0.


def test_interpolated_logits_at_the_ends_and_between():
    c = config_lib.load_config_file("configs/demo.py:tiny")
    model = registry.build_classifier(c.model, 10)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    init = model.init(jax.random.key(1), x, train=False)  # Also holds the sown intermediates.
    pre = {"params": init["params"], "batch_stats": init["batch_stats"]}
    ft = jax.tree.map(lambda a: a * 1.2 + 0.05, pre)
    ft["batch_stats"] = pre["batch_stats"]
    out = lambda v: model.apply(v, x, train=False)[0]  # noqa: E731
    for kind, fn in interpolation.LOGITS.items():
        for alpha, ref in ((0.0, ft), (1.0, pre)):
            got = fn(model, {"pre": pre, "ft": ft, "alpha": alpha}, x)
            np.testing.assert_allclose(got, out(ref), rtol=1e-5, atol=1e-5, err_msg=kind)
    half = {"pre": pre, "ft": ft, "alpha": 0.5}
    mid = {k: f(model, half, x) for k, f in interpolation.LOGITS.items()}
    assert float(jnp.abs(mid["weight"] - mid["representation"]).max()) > 1e-3


def test_linear_finetune_learns_and_sums_equal_widths(env):
    run = regime.load(str(env["run"]))
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    parts = regime.extract_parts(run, mesh, 256)
    assert parts[0]["features"]["stage4_block1_pooled"].shape[1] == 16
    out = linear_finetune.train_linear_finetune(
        parts, 10, dropout_rate=0.5, num_steps=300, eval_every=100, lr=0.05
    )
    assert out["combine"] == "concat"  # Widths 16, 16, 64 differ.
    assert out["selection"]["selected"]["id_accuracy"] > 0.3  # Chance is 0.1.
    assert len(out["rows"]) == 3 * 8
    blocks = ("stage3_block1_pooled", "stage4_block1_pooled")
    same = [{**p, "features": {s: p["features"][s] for s in blocks}} for p in parts]
    summed = linear_finetune.train_linear_finetune(same, 10, num_steps=100, eval_every=100)
    assert summed["combine"] == "sum" and summed["params"]["V"].shape == (16, 10)
    with pytest.raises(ValueError, match="stage9_block1_pooled"):
        linear_finetune.extract(
            run.model, run.v0, run.data, ["stage9_block1_pooled"], "minus_one_one", 64, mesh, 8
        )


def test_cli_writes_every_figure_with_its_numbers(env):
    out = env["root"] / "analysis"
    fv = flags.FlagValues()
    linear_regime.define_flags(fv)
    fv(
        [
            "linear_regime",
            f"--runs={env['run']},{env['frozen']}",
            f"--out={out}",
            f"--max_examples={MAX}",
            "--alphas=0,1",
            "--lft_steps=100",
            "--lft_eval_every=50",
        ]
    )
    linear_regime.analyze_flags(fv)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"very_large_dropout", "very_large_dropout_2"}
    for name in ("taylor_agreement", "taylor_trajectory", "interpolation", "linear_finetune"):
        assert (out / f"{name}.png").stat().st_size > 5000
        data = json.loads((out / f"{name}.json").read_text())
        assert set(data["per_run"]) == set(summary)
    frozen = summary["very_large_dropout_2"]
    assert frozen["taylor"]["agreement"] == {"id": 1.0, "ood": 1.0}  # θ_ft = θ0.
    # Features of θ_ft = θ0 have not moved; the trained run's have, on ID and OOD data.
    assert frozen["feature_distortion"]["id"]["relative_l2"] == pytest.approx(0.0, abs=1e-6)
    assert frozen["feature_distortion"]["ood"]["cka"] == pytest.approx(1.0, abs=1e-5)
    moved = summary["very_large_dropout"]["feature_distortion"]
    assert moved["id"]["relative_l2"] > 1e-3 and moved["ood"]["relative_l2"] > 1e-3
    assert {r["split"] for r in moved["splits"]} == {"in", "out"}
    only = regime.analyze(
        [str(env["frozen"])], str(out / "new" / "dir"), analyses=["feature_distortion"]
    )
    assert set(only["figures"]) == set()
    assert json.loads((out / "new" / "dir" / "summary.json").read_text()) == only["summary"]
    lft = frozen["linear_finetune"]
    assert lft["finetune"]["step"] == 2 and 0 <= lft["linear_finetune"]["id_accuracy"] <= 1
    with pytest.raises(ValueError, match="unknown"):
        regime.analyze([str(env["run"])], str(out), analyses=["taylor", "curvature"])
