"""Shared config defaults, the one config-argument parser, and config loading by name or path.

The configs (`richft_jax/configs/*.py`, one module per paper row) call `base_config()` and
override what their experiment changes, and read their `:arg` with `parse_arg`. They load by
name (`demo:tiny`) from the installed package or by path (`configs/demo.py:tiny` from a clone,
or any config file), the same way for `--config` (`define_config_flag`) and for code
(`load_config_file`).
"""

import difflib
import importlib
import importlib.util
import os
import pathlib
import pkgutil
import sys
import types

import ml_collections
from absl import flags

# LP-FT's linear probe (methods/lpft.py): the C values it tries, the LP-FT code's
# logspace(-7, 2, 10); config.lp_c_grid's default.
LP_C_GRID = tuple(10.0**k for k in range(-7, 3))


def data_config() -> ml_collections.ConfigDict:
    """`config.data` of base_config: the dataset, its splits, batches and evaluation."""
    d = ml_collections.ConfigDict()
    d.name = "digits_domains"
    d.data_dir = ml_collections.FieldReference(None, field_type=str)
    d.test_domains = "syn"  # Comma-separated names or indices ("3", "syn,digits").
    d.holdout_fraction = 0.2
    d.batch_size_per_domain = 32  # One batch of B images per training domain.
    d.augment = "crop"  # "none" | "crop" (pad-and-crop) | "flip_crop" | "domainbed".
    # Side of the square images fed to the model: images are decoded and resized to it at load
    # (the paper's eval resize). None: the dataset's own size (32 for the digits, 224 for the
    # variable-size DomainBed photos).
    d.image_size = ml_collections.FieldReference(None, field_type=int)
    # Where DomainBed's downloaded folders are (PACS/, VLCS/, office_home/, ...); None: TFDS's
    # <data_dir>/downloads/manual.
    d.manual_dir = ml_collections.FieldReference(None, field_type=str)
    # DomainBed photo sets: skip image files PIL cannot read even as truncated (default: an
    # error naming them, as DomainBed fails on them). Skipping changes the in/out splits.
    d.skip_unreadable = False
    d.normalize = "minus_one_one"  # "minus_one_one" | "imagenet".
    d.eval_batch_size = 512
    d.eval_max_examples = ml_collections.FieldReference(None, field_type=int)  # Per split.
    # Training domains' in splits (no selection, ID or OOD reads them): at most this many
    # examples each per evaluation (0: none; None: all, as DomainBed's train.py).
    d.eval_train_in_max_examples = ml_collections.FieldReference(None, field_type=int)
    d.eval_augment = "none"  # | "training_domains": through data.augment, as DomainBed.
    # A round's models that share all but their parameters (the run's weights, their moving
    # average) in one pass over the data, N at a time (vmapped); 0: the backend's choice, all
    # at once on GPU/TPU, one at a time on a CPU (weight_space.models_per_pass).
    d.eval_models_per_pass = 0
    d.prefetch = 2
    return d


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the paper's protocol (SGD momentum 0.9, lr x0.1 at half, frozen BN)."""
    c = ml_collections.ConfigDict()
    c.task = "finetune"  # "finetune" | "pretrain": same loop, different defaults.
    c.config_name = ""
    c.method = "erm"  # Recorded in results; "very_large_dropout" when dropout_rate > 0.
    c.seed = 0  # Root PRNG key: init, dropout masks, batch sampling.
    c.trial_seed = 0  # DomainBed: seeds the in/out split of every domain.

    c.data = data_config()

    c.model = ml_collections.ConfigDict()
    c.model.name = "small_resnet"  # See richft_jax.models.registry.
    c.model.kwargs = ml_collections.ConfigDict()
    c.model.freeze_bn = True
    c.model.head_zero_init = False
    # Compute dtype (parameters stay float32): "auto" = bfloat16 on GPU/TPU, float32 on CPU.
    c.model.dtype = "auto"

    c.pretrained = ml_collections.ConfigDict()
    c.pretrained.path = ml_collections.FieldReference(None, field_type=str)
    c.pretrained.pretrain_config = ml_collections.FieldReference(None, field_type=str)

    c.dropout_rate = 0.0  # Penultimate-feature dropout rate (0.9 in the paper's runs).
    c.lp_head = False  # LP-FT: start from the linear-probe head (LP is logged as step 0).
    c.lp_c_grid = LP_C_GRID  # The probe's C values (each one L-BFGS fit; fewer: cheaper).
    c.dropout_schedule = "constant"  # | "early" | "early_linear" | "late" (Liu et al. 2023).
    c.dropout_cutoff = 0.25  # Fraction of num_steps where early dropout ends / late begins.
    # Uniform running average of the weights from this step on, evaluated beside the model
    # (rows with method "<method>+moving_average"); None: off.
    c.moving_average_start = ml_collections.FieldReference(None, field_type=int)
    # Rates of the ViT's own dropout (inside blocks) and stochastic depth (rising linearly with
    # depth to this rate), on the same schedule as dropout_rate; 0: off.
    c.block_dropout_rate = 0.0
    c.drop_path_rate = 0.0

    # Regularized self-labeling (Li & Zhang 2021; richft_jax/methods/self_labeling.py).
    c.self_labeling = ml_collections.ConfigDict()
    sl = c.self_labeling
    sl.radius = ml_collections.FieldReference(None, field_type=float)  # D; None: unconstrained.
    sl.gamma = 1.0  # Radius factor per stage, input to output: D, D gamma, D gamma^2, ...
    sl.head_radius = ml_collections.FieldReference(None, field_type=float)  # Head kernel norm.
    sl.correction_start = ml_collections.FieldReference(None, field_type=int)  # Step; None: off.
    sl.correction_threshold = 0.9
    sl.reweight_start = ml_collections.FieldReference(None, field_type=int)  # Step; None: off.
    sl.reweight_temperature = 2.0

    # Label noise in the training domains' in splits (richft_jax/methods/label_noise.py).
    c.label_noise = ml_collections.ConfigDict()
    c.label_noise.kind = "none"  # | "symmetric" | "pairwise" (class-dependent).
    c.label_noise.rate = 0.0
    c.label_noise.seed = 0

    # End-of-run measurements, written into summary.json.
    c.measure = ml_collections.ConfigDict()
    c.measure.feature_distortion = False  # Penultimate features, pretrained vs fine-tuned.
    c.measure.layer_distances = False  # |W - W_pretrained| per tensor.
    c.measure.noise_stability = False  # Logit change under Gaussian input / weight noise.
    c.measure.noise_sigmas = (0.01, 0.1)
    c.measure.max_examples = 512  # Per split.

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # "sgd" (momentum, coupled weight decay as torch) | "adamw".
    c.optim.lr = 1e-3
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.head_lr_factor = 1.0  # Last-layer learning-rate factor.
    c.optim.schedule = "step"  # "step": x decay_factor at decay_at fractions | "cosine".
    c.optim.decay_at = (0.5,)
    c.optim.decay_steps = ()  # Update indices (torch MultiStepLR milestones): replace decay_at.
    c.optim.decay_factor = 0.1
    c.optim.warmup_steps = 0

    c.num_steps = 10_000
    c.step_labels = "updates"  # | "domainbed": records labelled updates - 1 (schedule.py).
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.keep_checkpoints = 2
    return c


def shipped(name: str) -> str:
    """The absolute path of `name` in richft_jax/assets, files shipped with the package (e.g. the
    demo's pretrained backbone, `configs/demo_pretrain.py`); each has `<stem>.json` beside it
    saying what it is and how it was made."""
    return str(pathlib.Path(__file__).resolve().parent / "assets" / name)


def cache_path(name: str) -> str:
    """`name` under $RICHFT_CACHE (default, also when set empty: ~/.cache/richft_jax), read at
    each call like the config files read it at each load."""
    return os.path.join(
        os.environ.get("RICHFT_CACHE") or os.path.join("~", ".cache", "richft_jax"), name
    )


_TRUE, _FALSE = ("true", "1"), ("false", "0")


def _typed(name: str, value: str, default: bool | int | float | str) -> bool | int | float | str:
    """`value` as the type of `default`; ValueError naming the argument and the type."""
    if isinstance(default, bool):
        if value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"config argument {name}={value!r}: expected a bool (true/false/1/0).")
    try:
        return type(default)(value)
    except ValueError:
        raise ValueError(
            f"config argument {name}={value!r}: expected {type(default).__name__}."
        ) from None


def parse_arg(arg: str | None, **defaults: bool | int | float | str) -> ml_collections.ConfigDict:
    """The config argument `name=value,flag,...` over `defaults`, each value typed as its default.

    A bare `name` sets a bool to True; bools also take true/false/1/0 (any case). Unknown,
    repeated or untyped names and values are refused with a ValueError naming them (and the
    valid names), so a misspelled argument never silently falls back to a default.
    """
    for name, default in defaults.items():
        if not isinstance(default, bool | int | float | str):
            raise TypeError(f"parse_arg default {name}={default!r}: not a bool, int, float or str.")
    out = ml_collections.ConfigDict(defaults)
    seen = set()
    for item in (arg or "").split(","):
        name, eq, value = (part.strip() for part in item.partition("="))
        if not name and not eq:
            continue  # Empty argument, or a trailing comma.
        if name not in defaults:
            valid = ", ".join(sorted(defaults)) or "none"
            raise ValueError(
                f"config argument {name!r} (in {arg!r}) is not one of the valid names: {valid}."
            )
        if name in seen:
            raise ValueError(f"config argument {name!r} is given twice (in {arg!r}).")
        seen.add(name)
        if not eq and not isinstance(defaults[name], bool):
            kind = type(defaults[name]).__name__
            raise ValueError(f"config argument {name!r} needs a value: {name}=<{kind}>.")
        out[name] = _typed(name, value, defaults[name]) if eq else True
    return out


def config_names() -> list[str]:
    """Names of the configs in the installed `richft_jax.configs` package."""
    from richft_jax import configs

    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__) if m.name[0] != "_")


def _package_config(name: str, spec: str) -> types.ModuleType:
    """The module `richft_jax.configs.<name>`, or FileNotFoundError listing the names."""
    if name not in config_names():
        raise FileNotFoundError(
            f"Config {spec!r}: not a config file, and no config named {name!r} in "
            f"richft_jax.configs (names: {', '.join(config_names())})."
        )
    return importlib.import_module(f"richft_jax.configs.{name}")


def config_module(path: str) -> types.ModuleType:
    """The config module of `path` (no `:arg`): a bare name (`demo`) from the installed package;
    an existing .py file; else `configs/NAME.py` or `richft_jax/configs/NAME.py` from the
    package, so the paths of a clone also work from any directory and from a wheel."""
    p = pathlib.Path(path)
    package_dir = pathlib.Path(__file__).resolve().parent / "configs"
    if p.suffix != ".py" and len(p.parts) == 1:
        return _package_config(path, path)
    if p.is_file():
        if p.resolve().parent == package_dir:
            return _package_config(p.stem, path)
        spec = importlib.util.spec_from_file_location(p.stem, p)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if p.suffix == ".py" and p.parts[:-1] in (("configs",), ("richft_jax", "configs")):
        return _package_config(p.stem, path)
    raise FileNotFoundError(
        f"Config file {path!r} not found (a config is a .py file, configs/NAME.py, "
        f"richft_jax/configs/NAME.py or a bare NAME; names: {', '.join(config_names())})."
    )


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of "SPEC" or "SPEC:arg", SPEC a name or path as `config_module` takes."""
    if arg is None and ":" in path:
        path, arg = path.split(":", 1)
    module = config_module(path)
    return module.get_config(arg) if arg is not None else module.get_config()


def key_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every key of `config` as a dotted path ("optim.lr"), sections included."""
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out += key_paths(value, f"{prefix}{key}.")
    return out


def unknown_overrides(config: ml_collections.ConfigDict, name: str, argv: list[str]) -> list[str]:
    """A line per `--NAME.a.b=value` in `argv` whose key the config does not have, with the
    keys it may have meant (ml_collections would fail on it with a bare traceback)."""
    problems, every = [], key_paths(config)
    for arg in argv:
        dotted = next(
            (arg[len(p) :] for p in (f"--{name}.", f"--no{name}.") if arg.startswith(p)), ""
        )
        path = dotted.split("=", 1)[0]
        if not path or "[" in path or path in every:
            continue
        leaf = path.rsplit(".", 1)[-1]
        near = [k for k in every if k.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(
            path, every, n=3
        )
        hint = f"; did you mean {' or '.join(f'--{name}.{k}' for k in near)}?" if near else "."
        problems.append(f"--{name}.{path}: the config has no key {path!r}{hint}")
    return problems


class _ConfigSpecParser(flags.ArgumentParser):
    """Parses a --config value as load_config_file does, then locks the config; an override of
    a key the config lacks is refused here, naming it (absl prints ValueErrors as flag errors,
    without a traceback)."""

    def __init__(self, name: str, argv: list[str] | None) -> None:
        super().__init__()
        self._name, self._argv = name, argv

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        try:
            config = load_config_file(argument)
        except OSError as e:
            raise ValueError(str(e)) from e
        argv = sys.argv if self._argv is None else self._argv
        if problems := unknown_overrides(config, self._name, argv):
            raise ValueError("\n".join(problems))
        config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


class _NoneOr(flags.ArgumentParser):
    """An override parser that reads `None` (or `none`) as None, else as `parser` reads it: the
    optional numbers (e.g. --config.moving_average_start=None turns the average off)."""

    def __init__(self, parser: flags.ArgumentParser):
        super().__init__()
        self._parser = parser

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip().lower() == "none":
            return None
        return self._parser.parse(argument)

    def flag_type(self) -> str:
        return f"{self._parser.flag_type()} or None"


def _accept_none_overrides() -> None:
    """ml_collections parses int and float overrides with absl's parsers, which refuse "None";
    a config field that is None by default (FieldReference(None, field_type=int)) could then
    never be set back to None from the command line. Fields that cannot hold None still refuse
    it (ConfigDict's type check, naming the field)."""
    from ml_collections.config_flags import config_flags  # noqa: PLC0415

    table = config_flags._FIELD_TYPE_TO_PARSER  # noqa: SLF001  (no public hook for this)
    for kind in (int, float):
        if not isinstance(table[kind], _NoneOr):
            table[kind] = _NoneOr(table[kind])


def define_config_flag(
    name: str = "config", help_string: str = "Config: NAME[:arg] or PATH.py[:arg].", **kwargs
) -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file` (`--NAME.key=value` overrides, locked config) whose value
    is a config name or path as `load_config_file` takes (`demo:tiny`, `configs/demo.py:tiny`).

    kwargs go to DEFINE_config_file (e.g. flag_values, sys_argv).
    """
    from ml_collections import config_flags

    _accept_none_overrides()
    holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True, **kwargs)
    # The config flag is an absl Flag: it parses its value with its `parser`.
    kwargs.get("flag_values", flags.FLAGS)[name].parser = _ConfigSpecParser(
        name, kwargs.get("sys_argv")
    )
    return holder
