"""Configs: the one argument parser, every config and argument, loading by name or path, from
any directory and from an installed wheel."""

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from absl import flags

from richft_jax import config_checks, config_lib
from richft_jax.configs import demo_pretrain

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every config and each documented argument (the first: its default). A new config must be
# listed here (test_every_config_is_listed).
DOCUMENTED = {
    "combine": [None],
    "demo": [None, "tiny"],
    "demo_erm": [None, "tiny"],
    "demo_lpft": [None, "tiny"],
    "demo_scratch": [None, "tiny", "erm", "tiny,erm"],
    "demo_pretrain": [None, "tiny", "vit", "tiny,vit", "glyphs", "tiny,glyphs"],
    "demo_early_dropout": [
        None,
        "tiny",
        "vit",
        "tiny,vit",
        "base=resnet50",
        "base=vit_b16,dataset=vlcs,test_domain=1,dry_run",
    ],
    "demo_late_dropout": [None, "tiny", "vit", "tiny,vit", "base=resnet50,dataset=pacs"],
    "demo_rsl": [
        None,
        "tiny",
        "noisy",
        "noisy_pairwise",
        "erm",
        "noisy,erm",
        "tiny,noisy",
        "base=resnet50,dataset=pacs,test_domain=2",
        "base=vit_b16,dataset=office_home,noisy",
    ],
    "mnist_family_demo": [None, "colored", "tiny", "colored,tiny"],
    "resnet50_dropout": [
        None,
        "dataset=pacs,test_domain=0",
        "dataset=vlcs,erm",
        "dataset=pacs,dry_run",
        "dataset=domainnet",
    ],
    "resnet50_erm": [None, "dataset=pacs,test_domain=0", "dry_run"],
    "vit_b16_dropout": [None, "dataset=office_home,test_domain=2", "erm", "dry_run"],
    "vit_b16_erm": [None, "dataset=pacs,test_domain=0", "dry_run"],
}
CASES = [(name, arg) for name, args in DOCUMENTED.items() for arg in args]


def spec(name, arg):
    return name + (f":{arg}" if arg is not None else "")


# ------------------------------------------------------------------------------------ parse_arg
DEFAULTS = {"tiny": False, "erm": False, "steps": 3, "rate": 0.5, "dataset": "pacs"}


def test_parse_arg_defaults_and_types():
    for empty in (None, "", ","):
        assert config_lib.parse_arg(empty, **DEFAULTS).to_dict() == DEFAULTS
    a = config_lib.parse_arg("tiny,steps=7,rate=0.25,dataset=vlcs", **DEFAULTS)
    assert a.tiny is True and a.erm is False and a.dataset == "vlcs"
    assert a.steps == 7 and isinstance(a.steps, int) and a.rate == 0.25
    assert config_lib.parse_arg(" tiny , steps = 2 ", **DEFAULTS).steps == 2


@pytest.mark.parametrize(
    "arg, want",
    [
        ("erm", True),
        ("erm=True", True),
        ("erm=true", True),
        ("erm=1", True),
        ("erm=False", False),
        ("erm=FALSE", False),
        ("erm=0", False),
    ],
)
def test_parse_arg_accepts_booleans(arg, want):
    assert config_lib.parse_arg(arg, **DEFAULTS).erm is want


@pytest.mark.parametrize(
    "arg, names",
    [
        ("nosiy", ["'nosiy'", "dataset, erm, rate, steps, tiny"]),  # Unknown: the valid names.
        ("tiny,nosiy=1", ["'nosiy'", "valid names"]),
        ("erm=yes", ["erm='yes'", "bool"]),
        ("steps=1.5", ["steps='1.5'", "int"]),
        ("rate=fast", ["rate='fast'", "float"]),
        ("steps", ["'steps'", "steps=<int>"]),  # Only bools may be bare.
        ("tiny,tiny=0", ["'tiny'", "twice"]),
    ],
)
def test_parse_arg_refuses_bad_arguments_naming_them(arg, names):
    with pytest.raises(ValueError) as e:
        config_lib.parse_arg(arg, **DEFAULTS)
    for name in names:
        assert name in str(e.value)


def test_parse_arg_refuses_untyped_defaults():
    with pytest.raises(TypeError, match="x=None"):
        config_lib.parse_arg(None, x=None)


# ------------------------------------------------------------------------------------- configs
def test_every_config_is_listed():
    assert config_lib.config_names() == sorted(DOCUMENTED)


@pytest.mark.parametrize("name, arg", CASES, ids=[spec(*c) for c in CASES])
def test_config_loads_the_same_by_name_and_paths_from_anywhere(name, arg, tmp_path, monkeypatch):
    want = config_lib.load_config_file(spec(name, arg)).to_dict()
    assert want["config_name"]
    # A clone's shim, by relative and absolute path; the package's file; the bare name.
    forms = [f"configs/{name}.py", str(ROOT / "configs" / f"{name}.py")]
    forms += [f"richft_jax/configs/{name}.py", name]
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        for path in forms:
            assert config_lib.load_config_file(spec(path, arg)).to_dict() == want, (cwd, path)
            assert config_lib.load_config_file(path, arg).to_dict() == want, (cwd, path)


@pytest.mark.parametrize(
    "spec_, config_name, method",
    [
        ("demo", "demo", "very_large_dropout"),
        ("demo:tiny", "demo_tiny", "very_large_dropout"),
        ("demo_erm:tiny", "demo_erm", "erm"),
        ("demo_lpft", "demo_lpft", "lp_ft"),
        ("demo_pretrain:vit", "demo_pretrain_vit", "pretrain"),
        ("demo_pretrain:glyphs", "demo_pretrain_glyphs", "pretrain"),
        ("demo_early_dropout:tiny", "demo_early_dropout_tiny", "early_dropout"),
        ("demo_late_dropout:vit", "demo_late_dropout", "late_dropout"),
        ("demo_rsl:tiny,noisy", "demo_rsl_tiny_noisy", "rsl_noisy20"),
        ("demo_rsl:noisy,erm", "demo_rsl_noisy", "erm_noisy20"),
        ("demo_rsl:noisy_pairwise", "demo_rsl_noisy_pairwise", "rsl_pairnoisy20"),
        ("demo_rsl:base=resnet50,dry_run", "resnet50_dropout_dry_run_rsl", "rsl"),
        ("mnist_family_demo:colored,tiny", "colored_mnist_demo_tiny", "very_large_dropout"),
        ("resnet50_dropout:erm", "resnet50_erm", "erm"),
        ("resnet50_erm:dry_run", "resnet50_erm_dry_run", "erm"),
        ("vit_b16_dropout", "vit_b16_dropout", "very_large_dropout"),
        ("vit_b16_erm", "vit_b16_erm", "erm"),
    ],
)
def test_derived_names_keep_their_values(spec_, config_name, method):
    c = config_lib.load_config_file(spec_)
    assert (c.config_name, c.method) == (config_name, method)


@pytest.mark.parametrize("name", ["demo_rsl", "demo_early_dropout", "demo_late_dropout"])
def test_method_on_a_domainbed_config_gets_its_test_domain(name):
    # The old `domainbed/dataset=pacs,test_domain=2` split at the comma first: test domain 0.
    c = config_lib.load_config_file(f"{name}:base=resnet50,dataset=pacs,test_domain=2")
    assert (c.data.name, c.data.test_domains, c.model.name) == ("pacs", "2", "resnet50")
    c = config_lib.load_config_file(f"{name}:base=vit_b16,dataset=vlcs,test_domain=3")
    assert (c.data.name, c.data.test_domains, c.model.name) == ("vlcs", "3", "vit_b16")


@pytest.mark.parametrize(
    "arg, want",
    [("erm", 0.0), ("erm=True", 0.0), ("erm=1", 0.0)]
    + [("erm=False", 0.9), ("erm=0", 0.9), (None, 0.9)],
)
def test_paper_config_takes_erm_as_a_boolean(arg, want):
    c = config_lib.load_config_file("resnet50_dropout", arg)
    assert c.dropout_rate == want and c.method == ("erm" if want == 0 else "very_large_dropout")


def test_rsl_erm_false_is_rsl():
    assert config_lib.load_config_file("demo_rsl:erm=False").self_labeling.radius == 1.0
    assert config_lib.load_config_file("demo_rsl:erm").self_labeling.radius is None


@pytest.mark.parametrize(
    "spec_, names",
    [
        ("demo_rsl:nosiy", ["'nosiy'", "noisy", "noisy_pairwise", "base"]),
        # The old nested syntax, which silently ran test domain 0.
        ("demo_rsl:domainbed/dataset=pacs,test_domain=2", ["'domainbed/dataset'", "base"]),
        ("configs/demo.py:tiny,nosiy", ["'nosiy'", "tiny"]),
        ("resnet50_dropout:erm=maybe", ["erm='maybe'", "bool"]),
        ("resnet50_erm:erm", ["'erm'", "dataset, dry_run, test_domain"]),
        ("combine:tiny", ["'tiny'", "none"]),
        ("demo_rsl:dataset=vlcs", ["dataset", "base=resnet50"]),
        ("demo_rsl:base=resnet", ["base='resnet'", "resnet50", "vit_b16"]),
        ("demo_rsl:base=resnet50,tiny", ["tiny", "dry_run"]),
        ("demo_rsl:noisy,noisy_pairwise", ["noisy and noisy_pairwise"]),
        ("demo_early_dropout:base=resnet50,vit", ["vit", "base=demo"]),
    ],
)
def test_bad_config_arguments_are_refused_naming_them(spec_, names):
    with pytest.raises(ValueError) as e:
        config_lib.load_config_file(spec_)
    for name in names:
        assert name in str(e.value)


@pytest.mark.parametrize("spec_", ["nope", "configs/nope.py", "richft_jax/configs/nope.py:tiny"])
def test_unknown_config_is_refused_listing_the_names(spec_, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.*names: combine, demo, "):
        config_lib.load_config_file(spec_)


def test_config_file_outside_the_package_loads_by_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from richft_jax.configs import demo\n\n"
        "def get_config(arg=None):\n"
        "    c = demo.build(tiny=arg == 'tiny')\n"
        "    c.config_name = 'mine'\n"
        "    return c\n"
    )
    c = config_lib.load_config_file(f"{path}:tiny")
    assert c.config_name == "mine" and c.num_steps == 20


def test_pretrain_configs_load_by_their_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, arg in CASES:
        c = config_lib.load_config_file(spec(name, arg))
        if c.get("pretrained") and c.pretrained.pretrain_config:
            pre = config_lib.load_config_file(c.pretrained.pretrain_config)
            assert pre.task == "pretrain" and pre.model.name == c.model.name


def test_cache_path_follows_the_environment(monkeypatch):
    monkeypatch.setenv("RICHFT_CACHE", "/elsewhere")
    assert (
        config_lib.load_config_file("demo:tiny").pretrained.path == "/elsewhere/demo_pretrain_tiny"
    )
    monkeypatch.setenv("RICHFT_CACHE", "")  # Set but empty: the default, never a relative path.
    assert config_lib.cache_path("weights") == "~/.cache/richft_jax/weights"


# ------------------------------------------------------------------------------ the --config flag
def parse_flags(*args):
    argv = ["prog", *args]
    flag_values = flags.FlagValues()
    holder = config_lib.define_config_flag(flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return holder.value


def test_config_flag_takes_names_and_paths_with_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("demo_rsl:tiny,noisy", "configs/demo_rsl.py:tiny,noisy"):
        c = parse_flags(f"--config={value}", "--config.num_steps=60", "--config.optim.lr=0.5")
        assert (c.config_name, c.num_steps, c.optim.lr) == ("demo_rsl_tiny_noisy", 60, 0.5)
        assert c.self_labeling.reweight_start == 10  # num_steps // 6, after the override.
    with pytest.raises(AttributeError, match="locked"):
        c.new_key = 1


def test_an_override_of_a_missing_key_is_refused_naming_it_and_what_was_meant():
    with pytest.raises(flags.IllegalFlagValueError) as e:
        parse_flags(
            "--config=demo:tiny",
            "--config.nosuch=3",
            "--config.data.decay_at=0.5",
            "--config.optim.lrr=1",
        )
    lines = str(e.value).splitlines()
    assert lines[0].endswith("--config.nosuch: the config has no key 'nosuch'.")
    assert lines[1] == (
        "--config.data.decay_at: the config has no key 'data.decay_at'; did you mean "
        "--config.optim.decay_at?"
    )
    assert lines[2].startswith(
        "--config.optim.lrr: the config has no key 'optim.lrr'; did you mean --config.optim.lr"
    )
    # Present keys, sections and booleans' --no form pass.
    c = parse_flags("--config=demo:tiny", "--config.optim.lr=0.5", "--noconfig.model.freeze_bn")
    assert (c.optim.lr, c.model.freeze_bn) == (0.5, False)


def test_the_real_command_refuses_a_missing_key_without_a_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "richft_jax.main",
        "--config=demo:tiny",
        f"--workdir={tmp_path / 'w'}",
        "--config.data.decay_at=0.5",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    assert (
        "--config.data.decay_at: the config has no key 'data.decay_at'; did you mean "
        "--config.optim.decay_at?" in p.stderr
    )
    assert not (tmp_path / "w").exists()  # Nothing written.


def test_an_optional_number_can_be_set_to_none_and_back():
    c = parse_flags("--config=demo", "--config.moving_average_start=None")
    assert c.moving_average_start is None  # The demo's 150: the average turned off.
    c = parse_flags("--config=demo:tiny", "--config.moving_average_start=40")
    assert c.moving_average_start == 40
    c = parse_flags("--config=demo:tiny", "--config.optim.lr=none")
    assert c.optim.lr is None  # As ConfigDict's Python API allows; the run's checks name it.
    with pytest.raises(flags.IllegalFlagValueError, match="moving_average_start"):
        parse_flags("--config=demo", "--config.moving_average_start=soon")


def test_the_lp_ft_probes_c_grid_is_a_config_key_the_command_line_sets():
    c = parse_flags("--config=demo_lpft:tiny")
    assert c.lp_c_grid == config_lib.LP_C_GRID  # base_config's: the LP-FT code's 10 values.
    c = parse_flags("--config=demo_lpft:tiny", "--config.lp_c_grid=(0.001,0.1,10)")
    assert c.lp_c_grid == (0.001, 0.1, 10)


@pytest.mark.parametrize("value, name", [("demo:nosiy", "nosiy"), ("nope", "nope")])
def test_config_flag_refuses_a_bad_config(value, name):
    with pytest.raises(flags.IllegalFlagValueError, match=name):
        parse_flags(f"--config={value}")


def test_sweep_refuses_a_misspelled_config_before_running(monkeypatch):
    spec_ = importlib.util.spec_from_file_location("sweep", ROOT / "launch" / "sweep.py")
    sweep = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(sweep)
    calls = []
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, check: calls.append(cmd))
    args = ["sweep", "--out", "/nonexistent", "--config", "demo", "--config", "demo_rsl:nosiy"]
    flag_values = flags.FlagValues()
    sweep.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match="nosiy"):
        flag_values(args)  # The command line's flag checks: nothing has run yet.
    assert not calls


# ---------------------------------------------------------------------------------- installed wheel
WHEEL_CHECK = """
import json, pathlib, sys
from absl import flags
import richft_jax
from richft_jax import config_checks, config_lib

argv = ["prog", "--config=demo_rsl:tiny,noisy", "--config.num_steps=60"]
flag_values = flags.FlagValues()
holder = config_lib.define_config_flag(flag_values=flag_values, sys_argv=argv)
flag_values(argv)
c = holder.value
clone_path = config_lib.load_config_file("configs/demo.py:tiny")
pre = config_lib.load_config_file(c.pretrained.pretrain_config)
print(json.dumps({
    "file": richft_jax.__file__,
    "config_file": sys.modules["richft_jax.configs.demo_rsl"].__file__,
    "names": config_lib.config_names(),
    "config": [c.config_name, c.num_steps, c.self_labeling.reweight_start],
    "clone_path": clone_path.config_name,
    "pretrain": pre.config_name,
    "demo_backbone": config_lib.load_config_file("demo").pretrained.path,
}))
"""


def test_configs_load_by_name_from_an_installed_wheel(tmp_path):
    # Build from a copy of the sources: an in-tree build would write build/ into the repository.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "richft_jax", src / "richft_jax", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("richft_jax-*.whl")
    asset = pathlib.Path(config_lib.shipped(demo_pretrain.SHIPPED))  # The pinned demo backbone.
    with zipfile.ZipFile(wheel) as z:
        body = z.read(f"richft_jax/assets/{asset.name}")
        record = json.loads(z.read(f"richft_jax/assets/{asset.stem}.json"))
    pinned = json.loads(asset.with_suffix(".json").read_text())["sha256"]
    assert hashlib.sha256(body).hexdigest() == record["sha256"] == pinned
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", WHEEL_CHECK],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert pathlib.Path(got["file"]).is_relative_to(site)
    assert pathlib.Path(got["config_file"]).is_relative_to(site)
    assert got["names"] == sorted(DOCUMENTED)
    assert got["config"] == ["demo_rsl_tiny_noisy", 60, 10]
    assert got["clone_path"] == "demo_tiny" and got["pretrain"] == "demo_pretrain_tiny"
    installed = pathlib.Path(got["demo_backbone"])  # The installed demo loads the shipped file.
    assert installed == site / "richft_jax" / "assets" / asset.name and installed.is_file()


def test_the_vits_speed_switches_are_config_keys_the_command_line_sets():
    """remat and attention (same parameters, same function) are keys of the ViT configs, so
    a GPU run sets them as flags; a bad attention is reported before anything runs."""
    c = parse_flags("--config=vit_b16_dropout", "--config.model.kwargs.attention=cudnn")
    assert (c.model.kwargs.attention, c.model.kwargs.remat) == ("cudnn", False)
    c = parse_flags("--config=vit_b16_erm", "--config.model.kwargs.remat=True")
    assert (c.model.kwargs.attention, c.model.kwargs.remat) == ("einsum", True)
    c = parse_flags("--config=vit_b16_dropout", "--config.model.kwargs.attention=flash")
    errors = [str(e) for e in config_checks.config_errors(c)]
    assert "config.model.kwargs.attention='flash' is not one of ('einsum', 'xla', 'cudnn')." in (
        errors
    )
