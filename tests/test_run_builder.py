"""The run builder (`richft_jax.run`) is the one source of a run: a tiny RotatedMNIST run at a
non-native image size (32 for 28x28 digits) with label noise, reloaded by `run.from_workdir`,
combined and analysed, shows the images, labels, θ0 and accuracies training had, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from richft_jax import checkpoints, combine, config_lib, results, run, train
from richft_jax.analysis import regime
from richft_jax.data import pipeline
from richft_jax.models import registry

CONFIG = "configs/mnist_family_demo.py:tiny"
NOISE = 0.3  # Symmetric label noise in the training domains' in splits.


def make_pretrained(path, config) -> None:
    """A stand-in pretrained checkpoint (random backbone of the config's model): no pretraining."""
    model = registry.build_classifier(config.model, 52)
    v = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)), train=False)
    mngr = checkpoints.manager(path / checkpoints.LATEST)
    checkpoints.save(mngr, 1, {"params": v["params"], "batch_stats": v["batch_stats"]})
    mngr.wait_until_finished()
    mngr.close()


def tiny_config(data_dir, pretrained, **overrides):
    c = config_lib.load_config_file(CONFIG)
    assert c.data.image_size == 32  # Not the digits' native 28: dropping it would show.
    c.data.data_dir = str(data_dir)
    c.pretrained.path, c.pretrained.pretrain_config = str(pretrained), None
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 2, 2
    c.data.batch_size_per_domain, c.data.eval_batch_size = 8, 256
    c.data.eval_max_examples = None  # Whole splits, as combine and the analyses evaluate.
    c.label_noise.kind, c.label_noise.rate, c.label_noise.seed = "symmetric", NOISE, 3
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """A trained run and a frozen one (lr 0: it never leaves θ0), with the data each trained
    on, as train.py got it from the run builder."""
    root = tmp_path_factory.mktemp("run_builder")
    make_pretrained(root / "pretrained", config_lib.load_config_file(CONFIG))
    used, load_data = {}, run.load_data

    def spy(config, *args):
        used[config.config_name] = load_data(config, *args)
        return used[config.config_name]

    for name, overrides in (("trained", {}), ("frozen", {"optim.lr": 0.0, "num_steps": 2})):
        config = tiny_config(data_dir, root / "pretrained", config_name=name, **overrides)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(run, "load_data", spy)  # train.py's run.load_data: what training used.
            train.train_and_evaluate(config, str(root / name))
    return {"root": root, "data_dir": data_dir, "used": used}


def logged(workdir, step: int) -> dict:
    """{(domain, split): accuracy} the run logged at `step`."""
    rows = results.read_rows(workdir)
    return {(r["domain"], r["split"]): r["accuracy"] for r in rows if r["step"] == step}


def selected_step(workdir) -> int:
    rows = results.read_rows(workdir)
    return results.select_training_domain_validation(rows)["selected"]["step"]


def test_from_workdir_has_the_configured_size_and_the_noisy_labels_training_used(runs):
    workdir = runs["root"] / "trained"
    built = run.from_workdir(str(workdir))
    assert built.step == selected_step(workdir)
    used = runs["used"]["trained"]
    assert len(built.data.splits) == len(used.splits) == 12
    for got, trained in zip(built.data.splits, used.splits, strict=True):
        assert (got.domain, got.split) == (trained.domain, trained.split)
        assert got.images.shape[1:] == (32, 32, 3)
        np.testing.assert_array_equal(got.images, trained.images)
        np.testing.assert_array_equal(got.labels, trained.labels)
    # The labels are noisy where training reads them (training domains' in splits) only.
    c = built.config.data
    clean = pipeline.load_domains(c.name, c.test_domains, 0, data_dir=c.data_dir, image_size=32)
    for got, ref in zip(built.data.splits, clean.splits, strict=True):
        changed = int(np.sum(got.labels != ref.labels))
        noisy = got.split == "in" and not got.is_test_domain
        assert changed == (round(NOISE * len(ref.labels)) if noisy else 0), got
    native = pipeline.load_domains(c.name, c.test_domains, 0, data_dir=c.data_dir)
    assert native.splits[0].images.shape[1:3] == (28, 28)


def test_init_variables_is_the_state_training_starts_from(runs):
    workdir = runs["root"] / "frozen"
    config, first, step = run.restore(str(workdir / checkpoints.LATEST / "2"))
    assert step == 2  # lr 0: the first checkpoint still holds the initial state.
    data = run.load_data(config)
    theta0 = run.init_variables(config, run.build_model(config, data.num_classes), data)
    for part in ("params", "batch_stats"):
        a, b = jax.tree_util.tree_flatten_with_path(theta0[part])[0], jax.tree.leaves(first[part])
        assert len(a) == len(b)
        for (path, x), y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    pretrained = checkpoints.restore_state_tree(runs["root"] / "pretrained")
    np.testing.assert_array_equal(
        theta0["params"]["backbone"]["stem_conv"]["kernel"],
        pretrained["params"]["backbone"]["stem_conv"]["kernel"],
    )


def test_init_variables_traces_each_model_once_per_process(runs):
    """Runs of the same model in one process share one jitted init (one trace, equal θ0); a
    model of another shape gets its own."""
    config, _, _ = run.restore(str(runs["root"] / "frozen" / checkpoints.LATEST / "2"))
    data = run.load_data(config)
    run.jitted_init.cache.clear()
    thetas = [
        run.init_variables(config, run.build_model(config, data.num_classes), data)
        for _ in range(2)
    ]
    jax.tree.map(np.testing.assert_array_equal, *thetas)
    model = run.build_model(config, data.num_classes)
    init = run.jitted_init(model, data.splits[0].images.shape[1:])
    assert init._cache_size() == 1  # Traced once for both runs.
    assert len(run.jitted_init.cache) == 1
    unhashable = model.clone(backbone=model.backbone.clone(widths=list(model.backbone.widths)))
    jax.tree.map(  # A module that holds a list (no hash) is initialised all the same.
        np.testing.assert_array_equal, run.init_variables(config, unhashable, data), thetas[0]
    )
    other = run.init_variables(config, run.build_model(config, data.num_classes + 1), data)
    assert len(run.jitted_init.cache) == 3
    assert other["params"]["head"]["kernel"].shape[1] == data.num_classes + 1


def test_combine_individual_rows_are_the_runs_logged_rows(runs):
    workdir = runs["root"] / "trained"
    c = config_lib.load_config_file("configs/combine.py")
    c.checkpoints = str(workdir)
    c.combinations = "individual,uniform_soup"
    out = runs["root"] / "combined"
    summary = combine.combine_and_evaluate(c, str(out))
    rows = results.read_rows(out)
    want = logged(workdir, selected_step(workdir))
    for method in ("individual", "uniform_soup"):  # A soup of one run is that run.
        got = {(r["domain"], r["split"]): r["accuracy"] for r in rows if r["method"] == method}
        assert got == want, method
    individual = summary["individual"][str(workdir)]
    assert individual == {
        "id_accuracy": results.id_ood([r for r in rows if r["method"] == "individual"])["id"],
        "ood_accuracy": results.id_ood([r for r in rows if r["method"] == "individual"])["ood"],
    }


def test_linear_regime_sees_the_runs_accuracies(runs):
    trained, frozen = runs["root"] / "trained", runs["root"] / "frozen"
    analysed = regime.load(str(trained))
    assert analysed.data.splits[0].images.shape[1:] == (32, 32, 3)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    rows = regime.interpolate(analysed, [0.0, 1.0], mesh)
    weight = lambda alpha: {  # noqa: E731
        (r["domain"], r["split"]): r["accuracy"]
        for r in rows
        if r["kind"] == "weight" and r["alpha"] == alpha
    }
    assert weight(0.0) == logged(trained, analysed.step)  # α = 0: θ_ft, the run's own rows.
    assert weight(1.0) == logged(frozen, 2)  # α = 1: θ0, where the frozen run stayed.
    at_ft = regime.taylor(analysed, mesh)
    want = logged(trained, analysed.step)
    for r in at_ft:  # The network side of the Taylor comparison is θ_ft itself.
        assert r["network_accuracy"] == pytest.approx(want[(r["domain"], r["split"])], abs=1e-6)
