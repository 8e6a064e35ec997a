"""Bad input stops before training with a message naming the bad thing; nothing is lost."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from richft_jax import checkpoints, config_lib, results, train
from richft_jax import workdir as workdir_lib
from richft_jax.models.classifier import Classifier
from richft_jax.models.demo import SmallResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(data_dir, **overrides):
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = None
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def test_unknown_domain_is_named(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown domain 'svhn'.*mnist"):
        train.train_and_evaluate(tiny(data_dir, **{"data.test_domains": "svhn"}), str(tmp_path))
    with pytest.raises(ValueError, match="index 7 out of range"):
        train.train_and_evaluate(tiny(data_dir, **{"data.test_domains": "7"}), str(tmp_path))
    assert not (tmp_path / "results.jsonl").exists()


def test_bad_config_values_are_named(data_dir, tmp_path):
    with pytest.raises(ValueError, match="config.optim.name='adam'"):
        train.train_and_evaluate(tiny(data_dir, **{"optim.name": "adam"}), str(tmp_path))
    with pytest.raises(ValueError, match="config.dropout_rate=1.0"):
        train.train_and_evaluate(tiny(data_dir, dropout_rate=1.0), str(tmp_path))


def test_unknown_config_key_and_wrong_type_on_the_command_line(tmp_path):
    base = [
        sys.executable,
        "-m",
        "richft_jax.main",
        "--config=configs/demo.py:tiny",
        f"--workdir={tmp_path}",
    ]
    for flag, expected in [
        ("--config.dropout_rat=0.5", "dropout_rat"),
        ("--config.num_steps=many", "num_steps"),
    ]:
        done = subprocess.run(base + [flag], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0
        assert expected in done.stderr
    assert not (tmp_path / "config.json").exists()


def test_unwritable_workdir_is_named(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="workdir .*a_file/run.* is not writable"):
        train.train_and_evaluate(tiny(data_dir), str(blocker / "run"))


def test_missing_pretrained_checkpoint_is_named(data_dir, tmp_path):
    c = tiny(data_dir)
    c.pretrained.path = str(tmp_path / "nowhere")
    c.pretrained.pretrain_config = None
    with pytest.raises(FileNotFoundError, match="no pretrained checkpoint at .*nowhere"):
        train.train_and_evaluate(c, str(tmp_path / "run"))


def test_shape_mismatched_pretrained_checkpoint_names_the_parameter(data_dir, tmp_path):
    # A "pretrained" run of another width: widen_conv has 32 outputs, the config wants 64.
    other = Classifier(SmallResNet(widths=(8, 8, 16, 16), feature_dim=32, stem_stride=2), 52)
    variables = other.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    mngr = checkpoints.manager(tmp_path / "pre" / checkpoints.LATEST)
    checkpoints.save(
        mngr, 1, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    )
    mngr.wait_until_finished()
    c = tiny(data_dir)
    c.pretrained.path = str(tmp_path / "pre")
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(c, str(tmp_path / "run"))
    message = str(err.value)
    assert "params/backbone/widen_bn" in message or "params/backbone/widen_conv" in message
    assert "(1, 1, 16, 32)" in message or "(32,)" in message
    assert str(tmp_path / "pre") in message
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny(data_dir, num_steps=10), str(workdir))
    rows_before = results.read_rows(workdir)
    # Resume the same workdir with an exploding learning rate.
    bad = tiny(data_dir, num_steps=20, **{"optim.lr": 1e12})
    with pytest.raises(
        FloatingPointError, match="Non-finite training loss.*last good checkpoint is step 10"
    ):
        train.train_and_evaluate(bad, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10"]
    assert results.read_rows(workdir) == rows_before
    tree = checkpoints.restore_state_tree(workdir)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree["params"]))


def test_second_run_on_the_same_workdir_is_refused(data_dir, tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    with workdir_lib.exclusive_workdir(path):  # Another run holds the workdir.
        with pytest.raises(RuntimeError, match="is in use by another run"):
            train.train_and_evaluate(tiny(data_dir), str(path))
    assert not (path / "config.json").exists()  # Nothing of the running run was touched.
