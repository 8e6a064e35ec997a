"""The preflight (richft_jax/preflight.py): before anything is built, downloaded or written, a
run checks every input it needs and names everything missing at once, each with its fix.

The design-card command on a bare machine (no weights, no dataset, no network) stops with one
error naming both, without a traceback and without building anything; weights a (local)
server serves count as downloadable without being downloaded; the embedded demo passes; a
DomainBed folder in the manual dir counts as preparable; an unwritable workdir is named.

The preflight imports neither TensorFlow nor JAX (it runs before them, so the command stops in
about a second): its checks (config_checks, data/catalog, data/domainbed_layout) are the ones
the run itself uses; each config error names its key, registry and sources hold their classes
to the tables when imported, and the catalog finds prepared copies where TFDS does.
"""

import os
import re
import socket
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
from etils import epath
from local_http import LocalServer
from PIL import Image

from richft_jax import combine, config_checks, config_lib, evaluation, preflight, train
from richft_jax import run as run_lib
from richft_jax.data import catalog, domainbed, letters, sources
from richft_jax.models import hub, registry

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
        "-X",
        "importtime",  # Which modules were imported before it stopped (stderr).
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
    # It stopped before TensorFlow, TFDS and JAX were imported.
    imported = set(re.findall(r"^import time:.*\|\s+([\w.]+)$", done.stderr, re.M))
    assert "richft_jax.preflight" in imported
    assert not imported & {"tensorflow", "tensorflow_datasets", "jax", "flax", "clu"}
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


def test_a_bucket_as_the_weights_cache_is_a_problem_with_its_fix(bare, monkeypatch):
    """RICHFT_CACHE=gs://...: one problem line naming the variable (downloads are renamed into
    place on a local disk), listed with the others, not an exception."""
    monkeypatch.setenv("RICHFT_CACHE", "gs://bucket/cache")
    problems = preflight.check(design_card(bare), str(bare / "run"))
    weights = [p for p in problems if p.what.startswith("weights 'vit_b16'")]
    assert len(weights) == 1 and "RICHFT_CACHE='gs://bucket/cache'" in weights[0].wrong
    assert "--config.pretrained.path=gs://BUCKET/FILE" in weights[0].fix
    assert "dataset 'pacs'" in [p.what for p in problems]


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


# ----------------------------------------------------------------------------- no JAX, no TF
def test_the_preflight_imports_neither_tensorflow_nor_jax(bare):
    code = (
        "import sys\n"
        "from richft_jax import config_lib, preflight\n"
        f"c = config_lib.load_config_file({DESIGN_CARD!r})\n"
        "c.data.data_dir = sys.argv[1]\n"
        "print([p.what.split(' (')[0] for p in preflight.check(c, sys.argv[2])])\n"
        "heavy = ('tensorflow', 'tensorflow_datasets', 'jax', 'flax', 'orbax', 'clu', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(bare / "tfds"), str(bare / "run")],
        cwd=REPO,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[\"weights 'vit_b16'\", \"dataset 'pacs'\"]", "[]"]


# ----------------------------------------------------------------------------- config checks
def bad_configs(tmp_path) -> dict[str, tuple[dict, list[str]]]:
    """Overrides of the design card, each with what its errors say, in order."""
    return {
        "fine": ({}, []),
        "choices": (
            {"optim.name": "adam", "data.augment": "x", "optim.schedule": "linear"},
            ["config.data.augment='x' is not one of", "config.optim.name='adam'", "'linear'"],
        ),
        "backbone": (
            {"model.name": "vit_x", "pretrained.path": None},
            ["config.model.name='vit_x' is not one of ('small_resnet', 'small_vit', 'vit_s16'"],
        ),
        "rates": (
            {"dropout_rate": 1.0, "num_steps": 0, "eval_every": -1},
            ["config.dropout_rate=1.0 must be in [0, 1)", "num_steps=0", "eval_every=-1"],
        ),
        "schedule": ({"dropout_schedule": "sometimes"}, ["config.dropout_schedule='sometimes'"]),
        "block dropout": (
            {"model.name": "resnet50", "pretrained.path": "resnet50", "block_dropout_rate": 0.5},
            ["backbone 'resnet50' has no block_dropout_rate"],
        ),
        "drop path": ({"drop_path_rate": 1.5}, ["config.drop_path_rate=1.5 must be in [0, 1)"]),
        "label noise": ({"label_noise.kind": "random"}, ["config.label_noise.kind='random'"]),
        "noise rate": ({"label_noise.rate": 2.0}, ["config.label_noise.rate=2.0"]),
        "self-labeling": (
            {"self_labeling.gamma": 0.0, "self_labeling.radius": -1.0},
            ["config.self_labeling.radius=-1.0 must be positive"],
        ),
        "threshold": (
            {"self_labeling.correction_threshold": 1.0},
            ["config.self_labeling.correction_threshold=1.0 must be in (0, 1)"],
        ),
        "temperature": (
            {"self_labeling.reweight_temperature": 0.0},
            ["config.self_labeling.reweight_temperature=0.0 must be positive"],
        ),
        "weights of another arch": (
            {"pretrained.path": "resnet50"},
            ["config.pretrained.path='resnet50': resnet50 weights"],
        ),
        "a bucket URL": ({"pretrained.path": "gs://bucket/weights.npz"}, []),
        "a web URL": (
            {"pretrained.path": "https://example.com/weights.npz"},
            ["https:// is not a storage system"],
        ),
        "a local path": ({"pretrained.path": str(tmp_path / "weights.npz")}, []),
        "LP's C grid": (  # Checked though config.lp_head is off (the design card's).
            {"lp_c_grid": (0.0, 1.0)},
            ["config.lp_c_grid=(0.0, 1.0): give one or more positive values of C"],
        ),
    }


def test_config_errors_name_each_bad_key(bare):
    for name, (overrides, expected) in bad_configs(bare).items():
        errors = [str(e) for e in config_checks.config_errors(design_card(bare, **overrides))]
        assert len(errors) == len(expected), (name, errors)
        for error, part in zip(errors, expected, strict=True):
            assert part in error, (name, error)
    for spec in config_lib.config_names():  # Every shipped training config passes.
        c = config_lib.load_config_file(spec)
        if c.get("task") != "combine":
            assert config_checks.config_errors(c) == [], spec
    c = design_card(bare, **{"data.eval_augment": "always"})
    with pytest.raises(ValueError, match=r"config.data.eval_augment='always' is not one of"):
        evaluation.eval_augmentation(c, 0)


def test_lp_c_grid_takes_positive_numbers_only():
    """config_checks.lp_c_grid, the rule methods/lpft.c_grid applies: floats back; anything
    else a ValueError naming the key and the fix (a number or a string is not a grid)."""
    assert config_checks.lp_c_grid(config_lib.LP_C_GRID) == config_lib.LP_C_GRID
    got = config_checks.lp_c_grid([1e-3, 1])  # As config.json gives it back.
    assert got == (1e-3, 1.0) and all(type(c) is float for c in got)
    for bad in (None, (), (0.0, 1.0), (-1.0,), (float("nan"),), (True,), ("0.1",), 0.1, "1"):
        with pytest.raises(ValueError, match=r"config\.lp_c_grid=.*positive values of C"):
            config_checks.lp_c_grid(bad)


@pytest.mark.parametrize("grid", ["()", "None", "(0.0,1.0)", "(0.1,'a')"])
def test_a_bad_lp_c_grid_stops_the_command_in_the_preflight(bare, grid):
    """config.lp_c_grid (LP-FT's probe, methods/lpft.py) is named by the preflight, before
    TensorFlow or JAX is imported, not minutes in when the probe starts; whether or not
    config.lp_head is on (the demo's is off)."""
    command = [
        *(sys.executable, "-X", "importtime", "-m", "richft_jax.main"),
        *("--config=configs/demo.py:tiny", f"--workdir={bare / 'x'}"),
        *(f"--config.data.data_dir={bare / 'tfds'}", f"--config.lp_c_grid={grid}"),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out
    assert "Preflight: 1 problem(s)" in out
    assert re.search(r"config\.lp_c_grid=.*: give one or more positive values of C\.", out), out
    assert "Fix: --config.lp_c_grid=VALUE" in out
    imported = set(re.findall(r"^import time:.*\|\s+([\w.]+)$", done.stderr, re.M))
    assert "richft_jax.preflight" in imported
    assert not imported & {"tensorflow", "tensorflow_datasets", "jax", "flax", "clu"}
    assert files_under(bare / "tfds") == [] and not (bare / "x").exists()


def test_the_tables_are_held_to_the_classes_when_imported():
    """registry and sources check their classes against the jax-free tables at import: a
    backbone or a builder added without its entry fails there, naming it."""

    class Rates(registry.BACKBONES["small_vit"]):
        def __call__(self, x, train: bool = False, drop_path_rate: float = 0.0):
            return x

    registry.check_backbone_rates(registry.BACKBONES)
    with pytest.raises(ValueError) as err:
        registry.check_backbone_rates({**registry.BACKBONES, "vit_x": Rates, "small_vit": Rates})
    assert "'vit_x' is not in the table" in str(err.value)
    assert "'small_vit' is ('drop_path_rate',), the table says" in str(err.value)
    sources.check_catalog(sources.BUILDERS)
    builders = {**sources.BUILDERS, "letters_x": letters.Letters}
    del builders["vlcs"]
    with pytest.raises(ValueError) as err:
        sources.check_catalog(builders)
    assert "'letters_x' is not in the table" in str(err.value)
    assert "'vlcs' has no class" in str(err.value)


def test_a_missing_pretrained_checkpoint_is_named():
    with pytest.raises(FileNotFoundError, match="config.pretrained.path: no pretrained checkpoint"):
        run_lib.pretrained_checkpoint("/nowhere/at/all")


# ----------------------------------------------------------------------------- the catalog
def test_catalog_finds_prepared_copies_where_tfds_puts_them(tmp_path, monkeypatch):
    for name in sources.BUILDERS:
        for skip in (False, True) if name in domainbed.BUILDERS else (False,):
            made = sources.make_builder(name, str(tmp_path), skip)
            assert catalog.prepared_dir(name, str(tmp_path), skip) == epath.Path(made.data_dir)
    # Without a data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets, as TFDS's default.
    from tensorflow_datasets.core import constants  # noqa: PLC0415

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert catalog.tfds_data_dir() == epath.Path(constants.get_default_data_dir())
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert catalog.tfds_data_dir() == epath.Path(constants.get_default_data_dir())


def tiny_pacs(manual) -> None:
    """PACS with one tiny image per class: a deliberate subset, to build in seconds."""
    spec = domainbed.SPECS["pacs"]
    for domain in spec.domains:
        for name in spec.classes:
            folder = manual / spec.folder / domain / name
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (40, 80, 120)).save(folder / "a.png")


def test_is_prepared_agrees_with_the_builders(bare, monkeypatch):
    data_dir = str(bare / "tfds")
    monkeypatch.setattr(letters, "SPLIT_SIZES", {"train": 52, "test": 52})  # Builds in a second.
    builder = sources.make_builder("letters", data_dir)
    assert catalog.is_prepared("letters", data_dir) is builder.is_prepared() is False
    sources.builder_of("letters", data_dir)
    assert catalog.is_prepared("letters", data_dir) is builder.is_prepared() is True
    # A DomainBed set, prepared in its builder config's directory only.
    tiny_pacs(bare / "manual")
    sources.builder_of("pacs", data_dir, str(bare / "manual"), allow_count_mismatch=True)
    for skip in (False, True):
        made = sources.make_builder("pacs", data_dir, skip)
        assert catalog.is_prepared("pacs", data_dir, skip) is made.is_prepared() is (not skip)
    # A version directory without dataset_info.json (a build that died): not prepared.
    catalog.prepared_dir("vlcs", data_dir).mkdir(parents=True)
    vlcs = sources.make_builder("vlcs", data_dir)
    assert catalog.is_prepared("vlcs", data_dir) is vlcs.is_prepared() is False
    # The prepared PACS passes the preflight without a manual dir; VLCS does not.
    assert preflight.check(design_card(bare, **{"pretrained.path": None}), str(bare / "r")) == []
    c = design_card(bare, **{"data.name": "vlcs", "pretrained.path": None})
    assert [p.what for p in preflight.check(c, str(bare / "r"))] == ["dataset 'vlcs'"]
