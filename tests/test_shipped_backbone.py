"""The demo's pretrained backbone ships with the package (richft_jax/assets): the full-size demo
configs load that file, pinned by the sha256 of its record, strictly against their architecture,
and never pretrain; a run's config.json records the file's sha256."""

import json
import pathlib
import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from richft_jax import config_checks, config_lib, run, train
from richft_jax.configs import demo_pretrain
from richft_jax.models import hub

FILE = pathlib.Path(config_lib.shipped(demo_pretrain.SHIPPED))
RECORD = json.loads(FILE.with_suffix(".json").read_text())
# Every embedded config on the shipped small ResNet, at full size.
CONFIGS = (
    "demo",
    "demo_erm",
    "demo_lpft",
    "demo_late_dropout",
    "demo_early_dropout",
    "demo_rsl",
    "mnist_family_demo",
    "mnist_family_demo:colored",
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty RICHFT_CACHE, and a train_and_evaluate that fails if anything pretrains."""
    path = tmp_path / "cache"
    monkeypatch.setenv("RICHFT_CACHE", str(path))

    real = train.train_and_evaluate

    def no_pretraining(config, workdir):
        if config.task == "pretrain":
            raise AssertionError(f"pretraining {config.config_name} into {workdir}")
        return real(config, workdir)

    monkeypatch.setattr(train, "train_and_evaluate", no_pretraining)
    return path


def demo_variables(config):
    model = run.build_model(config, 10)
    v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    return v["params"], v["batch_stats"]


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} of a nested config dict."""
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_the_shipped_file_is_the_recorded_one_and_in_the_package():
    assert FILE.parent == pathlib.Path(run.__file__).parent / "assets"
    assert RECORD["file"] == FILE.name and RECORD["size"] == FILE.stat().st_size
    assert hub.file_sha256(FILE) == RECORD["sha256"]
    made_by = RECORD["made_by"]
    assert made_by["commit"]
    # The recipe the demo configs name (pretrained.pretrain_config) is the one that made it.
    recipe = flat(json.loads(config_lib.load_config_file(demo_pretrain.SHIPPED_CONFIG).to_json()))
    recorded = flat(made_by["pretrain_config"])
    # Keys added to the configs since: at base_config's default (what the code did before).
    defaults = flat(json.loads(config_lib.base_config().to_json()))
    added = set(recipe) - set(recorded)
    assert {k: recipe[k] for k in added} == {k: defaults[k] for k in added}
    assert {k: v for k, v in recipe.items() if k not in added} == recorded
    assert f"--config={demo_pretrain.SHIPPED_CONFIG} " in made_by["pretrain_command"]
    assert 0.5 < RECORD["quality"]["letters_test_accuracy"] <= 1
    root = pathlib.Path(__file__).parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert '"assets/*.msgpack", "assets/*.json"' in pyproject  # A wheel installs them.
    readme = (root / "README.md").read_text()  # The user's first page names the file it loads.
    assert f"richft_jax/assets/{FILE.name}" in readme and RECORD["sha256"] in readme


@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_demo_configs_resolve_to_the_shipped_file(name, cache):
    c = config_lib.load_config_file(name)
    assert c.pretrained.path == str(FILE)
    assert c.model.name == RECORD["model"]["name"]
    assert config_checks.architecture_kwargs(c.model.kwargs.to_dict()) == {
        k: tuple(v) if isinstance(v, list) else v for k, v in RECORD["model"]["kwargs"].items()
    }
    train.ensure_pretrained(c)  # Does nothing: the file is there.
    assert not cache.exists()
    # The tiny variant still pretrains its tiny backbone on first use, into the cache.
    tiny = config_lib.load_config_file(name.split(":")[0], "tiny")
    assert tiny.pretrained.path == str(cache / "demo_pretrain_tiny")
    assert tiny.pretrained.pretrain_config == "demo_pretrain:tiny"
    assert c.pretrained.pretrain_config == demo_pretrain.SHIPPED_CONFIG  # Its recipe.


def test_the_demo_initialises_from_the_shipped_file_without_pretraining(cache):
    c = config_lib.load_config_file("demo")
    params, batch_stats = demo_variables(c)
    train.ensure_pretrained(c)
    got_params, got_stats = run.load_pretrained(c, params, batch_stats)
    assert c.pretrained.sha256 == RECORD["sha256"]  # What config.json records.
    shipped = flax.serialization.msgpack_restore(FILE.read_bytes())
    for got, want, init in (
        (got_params["backbone"], shipped["params"]["backbone"], params["backbone"]),
        (got_stats["backbone"], shipped["batch_stats"]["backbone"], batch_stats["backbone"]),
    ):
        got, want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
        assert set(got) == set(want) == set(traverse_util.flatten_dict(init))  # Every one.
        for key, value in want.items():
            np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=str(key))
    jax.tree.map(np.testing.assert_array_equal, got_params["head"], params["head"])  # Its own.
    assert not cache.exists()


def test_a_wrong_architecture_is_refused_naming_the_parameter(cache):
    c = config_lib.load_config_file("demo")
    c.model.kwargs.feature_dim = 256
    params, batch_stats = demo_variables(c)
    with pytest.raises(ValueError) as e:
        run.load_pretrained(c, params, batch_stats)
    msg = str(e.value)
    # The first mismatched leaf (widen_conv/kernel or a widen_bn leaf: dict order), both shapes.
    assert str(FILE) in msg and re.search(r"parameter 'params/backbone/widen_(conv|bn)/\w+'", msg)
    assert re.search(
        r"has shape \((1, 1, 128, )?512,?\), the model expects shape "
        r"\((1, 1, 128, )?256,?\)",
        msg,
    )
    assert "'feature_dim': 512" in msg  # What the file was made for, from its record.
    assert not cache.exists()


def test_a_demo_run_records_the_files_sha256_and_pretrains_nothing(cache, data_dir, tmp_path):
    c = config_lib.load_config_file("demo")
    c.data.data_dir = str(data_dir)
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 2, 2
    c.data.batch_size_per_domain, c.data.eval_batch_size, c.data.eval_max_examples = 8, 64, 64
    c.moving_average_start = None
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["last"]["step"] == 2
    written = json.loads((tmp_path / "run" / "config.json").read_text())["pretrained"]
    assert written["path"] == str(FILE) and written["sha256"] == RECORD["sha256"]
    assert not cache.exists()


def test_every_shipped_backbone_is_its_record_and_loads_into_the_demo(cache):
    """Each assets/*.msgpack (the shipped glyphs one and the earlier letters one) is the file its
    record names, and the demo fine-tunes from it by pretrained.path, nothing pretrained."""
    files = sorted(FILE.parent.glob("*.msgpack"))
    assert FILE in files and len(files) >= 2
    for file in files:
        record = json.loads(file.with_suffix(".json").read_text())
        assert record["file"] == file.name and hub.file_sha256(file) == record["sha256"]
        assert record["model"] == RECORD["model"]  # One architecture: the demo's.
        assert "--config=demo_pretrain" in record["made_by"]["pretrain_command"]
        c = config_lib.load_config_file("demo")
        c.pretrained.path = str(file)
        params, batch_stats = demo_variables(c)
        train.ensure_pretrained(c)
        got, _ = run.load_pretrained(c, params, batch_stats)
        want = flax.serialization.msgpack_restore(file.read_bytes())["params"]["backbone"]
        flat_got = traverse_util.flatten_dict(got["backbone"])
        flat_want = traverse_util.flatten_dict(want)
        assert set(flat_got) == set(flat_want)
        for key, value in flat_want.items():
            np.testing.assert_array_equal(np.asarray(flat_got[key]), value, err_msg=str(key))
        assert c.pretrained.sha256 == record["sha256"]
    assert not cache.exists()
