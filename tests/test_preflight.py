"""The preflight (richft_jax/preflight.py): before anything is built, downloaded or written, a
run checks every input it needs and names everything missing at once, each with its fix.

The design-card command on a bare machine (no weights, no dataset, no network) stops with one
error naming both, without a traceback and without building anything; weights a (local)
server serves count as downloadable without being downloaded; the embedded demo passes; a
DomainBed folder in the manual dir counts as preparable; an unwritable workdir is named.
"""

import os
import socket
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
from local_http import LocalServer

from richft_jax import combine, config_lib, preflight, train
from richft_jax.data import domainbed
from richft_jax.models import hub

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN_CARD = "configs/vit_b16_dropout.py:dataset=pacs,test_domain=0"


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def url_path(name: str) -> str:
    return urllib.parse.urlsplit(hub.WEIGHTS[name].urls[0]).path


def files_under(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """An empty weights cache, an empty TFDS data dir, and a mirror where nothing listens."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "tfds").mkdir()
    monkeypatch.setenv("RICHFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv(hub.MIRROR_ENV, closed_port_url())
    return tmp_path


def design_card(tmp_path, **overrides):
    c = config_lib.load_config_file(DESIGN_CARD)
    c.data.data_dir = str(tmp_path / "tfds")
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


# ----------------------------------------------------------------------------- the command
def test_the_design_card_command_on_a_bare_machine_names_dataset_and_weights(bare):
    command = [
        sys.executable,
        "-m",
        "richft_jax.main",
        f"--config={DESIGN_CARD}",
        f"--workdir={bare / 'x'}",
        f"--config.data.data_dir={bare / 'tfds'}",
    ]
    done = subprocess.run(
        command, cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in out
    assert "Preflight: 2 problem(s)" in out
    # The dataset, and how to get it.
    assert "dataset 'pacs'" in out and "PACS/" in out
    assert "python -m domainbed.scripts.download --data_dir=DIR" in out
    assert "--config.data.manual_dir" in out
    # The weights: the URL, where to put the file by hand, the mirror variable.
    assert "weights 'vit_b16'" in out
    assert hub.WEIGHTS["vit_b16"].urls[0] in out
    cached = bare / "cache" / "weights" / "vit_b16" / hub.WEIGHTS["vit_b16"].file
    assert str(cached) in out
    assert "RICHFT_WEIGHTS_MIRROR" in out
    # Nothing was built, downloaded or written.
    assert files_under(bare / "tfds") == [] and files_under(bare / "cache") == []
    assert not (bare / "x").exists()


def test_every_config_error_is_listed_at_once_and_nothing_is_written(bare):
    c = design_card(bare, **{"optim.name": "adam", "dropout_rate": 1.0, "num_steps": 0})
    with pytest.raises(preflight.PreflightError) as err:
        train.train_and_evaluate(c, str(bare / "run"))
    message = str(err.value)
    for expected in ("config.optim.name='adam'", "config.dropout_rate=1.0", "config.num_steps=0"):
        assert expected in message
    assert "weights 'vit_b16'" in message and "dataset 'pacs'" in message
    assert len(err.value.problems) == 5
    assert isinstance(err.value, ValueError) and isinstance(err.value, OSError)
    assert not (bare / "run").exists()


# ----------------------------------------------------------------------------- weights
@pytest.fixture
def server():
    s = LocalServer({url_path("vit_b16"): b"weights"})
    yield s
    s.close()


def test_served_weights_are_downloadable_and_not_downloaded(bare, server, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, server.url)
    problems = preflight.check(design_card(bare), str(bare / "run"))
    assert [p.what for p in problems] == ["dataset 'pacs'"]  # The weights' problem is gone.
    assert server.log == [("HEAD", url_path("vit_b16"), None)]
    # A server that refuses HEAD is asked for one byte instead.
    server.log.clear()
    server.head = False
    problems = preflight.check(design_card(bare), str(bare / "run"))
    assert [p.what for p in problems] == ["dataset 'pacs'"]
    assert server.log == [
        ("HEAD", url_path("vit_b16"), None),
        ("GET", url_path("vit_b16"), "bytes=0-0"),
    ]
    # A mirror without the file: named with the answer it gave.
    server.files.clear()
    (problem, _) = preflight.check(design_card(bare), str(bare / "run"))
    assert problem.what.startswith("weights 'vit_b16'") and "HTTP 404" in problem.wrong
    assert files_under(bare / "cache") == [] and files_under(bare / "tfds") == []


def test_cached_weights_pass_and_a_broken_cached_file_is_named(bare):
    path = hub.cache_file("vit_b16")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    (problem, _) = preflight.check(design_card(bare), str(bare / "run"))
    assert "not a complete big_vision_npz file" in problem.wrong and f"rm {path}" in problem.fix
    path.unlink()
    np.savez(path.with_suffix(""), x=np.zeros(2))  # savez adds ".npz".
    problems = preflight.check(design_card(bare), str(bare / "run"))
    assert [p.what for p in problems] == ["dataset 'pacs'"]


def test_a_missing_local_checkpoint_is_named(bare):
    c = design_card(bare, **{"pretrained.path": str(bare / "nowhere")})
    problems = preflight.check(c, str(bare / "run"))
    assert problems[0].what == "pretrained backbone"
    assert "no pretrained checkpoint at" in problems[0].wrong and "nowhere" in problems[0].wrong


# ----------------------------------------------------------------------------- available
def test_the_embedded_demo_passes_and_builds_nothing(bare):
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(bare / "tfds")
    assert c.pretrained.pretrain_config  # Its backbone is pretrained by the first run: fine.
    assert preflight.check(c, str(bare / "run")) == []
    assert files_under(bare / "tfds") == [] and files_under(bare / "cache") == []


def test_a_domainbed_folder_in_the_manual_dir_is_preparable(bare):
    spec = domainbed.SPECS["pacs"]
    manual = bare / "domainbed"
    for domain in spec.domains:
        for name in spec.classes:
            (manual / spec.folder / domain / name).mkdir(parents=True)
    c = design_card(bare, **{"data.manual_dir": str(manual), "pretrained.path": None})
    assert preflight.check(c, str(bare / "run")) == []
    # A class folder missing in one domain: named.
    (manual / spec.folder / "sketch" / "horse").rmdir()
    (problem,) = preflight.check(c, str(bare / "run"))
    assert problem.what == "dataset 'pacs'" and "['horse'] missing" in problem.wrong


# ----------------------------------------------------------------------------- workdir
def test_an_unwritable_workdir_is_named(bare):
    blocker = bare / "a_file"
    blocker.write_text("not a directory")
    c = config_lib.load_config_file("configs/demo.py:tiny")
    c.data.data_dir = str(bare / "tfds")
    (problem,) = preflight.check(c, str(blocker / "run"))
    assert problem.what == "workdir"
    assert f"'{blocker / 'run'}' is not writable: {blocker} is not a directory" in problem.wrong
    assert preflight.check(c, "gs://bucket/run") == []  # Written as is; checked by the run.
    (problem,) = preflight.check(c, "https://host/run")
    assert "--workdir='https://host/run': https:// is not a storage system" in problem.wrong
    if os.geteuid() != 0:  # Root writes anywhere (but on a read-only file system).
        locked = bare / "locked"
        locked.mkdir(mode=0o500)
        (problem,) = preflight.check(c, str(locked / "run"))
        assert "Permission denied" in problem.wrong


# ----------------------------------------------------------------------------- combine
def test_a_combine_run_lists_every_problem_before_restoring_anything(bare):
    blocker = bare / "a_file"
    blocker.write_text("not a directory")
    c = config_lib.load_config_file("configs/combine.py")
    c.checkpoints = f"{bare / 'no_run'},{bare / 'no_run_either'}"
    c.combinations = "uniform_soup,magic"
    with pytest.raises(preflight.PreflightError) as err:
        combine.combine_and_evaluate(c, str(blocker / "combined"))
    runs = [f"run '{bare / 'no_run'}'", f"run '{bare / 'no_run_either'}'"]
    assert [p.what for p in err.value.problems] == ["config", *runs, "workdir"]
    message = str(err.value)
    assert "unknown ['magic']" in message and "No finished Orbax checkpoint" in message
