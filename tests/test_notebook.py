"""The Colab notebook runs headless, top to bottom, on tiny runs of the embedded demo: every
analysis cell executes and shows its figure, so the notebook cannot rot."""

import json
import pathlib

import jax
import jax.numpy as jnp
import nbformat
import pytest
from nbclient import NotebookClient

from richft_jax import checkpoints, config_lib, train
from richft_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "launch" / "colab_linear_regime.ipynb"


def tiny_run(data_dir, pretrained, workdir, dropout_rate: float) -> None:
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(data_dir)
    c.pretrained.path = str(pretrained)
    c.dropout_rate = dropout_rate
    c.method = "erm" if dropout_rate == 0 else "very_large_dropout"
    c.data.eval_max_examples, c.data.eval_batch_size = 32, 32
    c.num_steps, c.eval_every, c.checkpoint_every = 6, 3, 3
    train.train_and_evaluate(c, str(workdir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("notebook")
    config = config_lib.load_config_file("configs/demo.py:tiny")
    model = registry.build_classifier(config.model, 52)  # A stand-in pretrained backbone.
    v = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)), train=False)
    mngr = checkpoints.manager(root / "pretrained" / checkpoints.LATEST)
    checkpoints.save(mngr, 1, {"params": v["params"], "batch_stats": v["batch_stats"]})
    mngr.wait_until_finished()
    mngr.close()
    tiny_run(data_dir, root / "pretrained", root / "erm", 0.0)
    tiny_run(data_dir, root / "pretrained", root / "dropout", 0.9)
    return root


def test_notebook_executes_on_tiny_runs(runs, data_dir, monkeypatch):
    out = runs / "figures"
    env = {
        "RICHFT_RUNS": f"{runs / 'erm'},{runs / 'dropout'}",
        "RICHFT_OUT": str(out),
        "RICHFT_DATA_DIR": str(data_dir),
        "RICHFT_MAX_EXAMPLES": "32",
        "RICHFT_ALPHAS": "0,0.5,1",
        "RICHFT_LFT_STEPS": "40",
        "RICHFT_TRAIN_MISSING": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # The kernel inherits the environment.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"erm", "very_large_dropout"}
    for name in ("taylor_agreement", "taylor_trajectory", "interpolation", "linear_finetune"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.json").is_file()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "| erm |" in text and "agreement on 32 images:" in text
    # The install cell found the package importable and skipped %pip.
    assert "repository: " + str(REPO) in text
