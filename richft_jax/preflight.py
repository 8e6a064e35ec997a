"""Preflight: every input a run needs, checked before it builds data, downloads weights or
initialises a model, and everything missing reported at once, each with the command that fixes it.

`check(config, workdir)` lists the problems; `run(config, workdir)` raises one PreflightError
listing them all (`main` calls it before it imports TensorFlow and JAX and turns it into an
exit without traceback; `train.train_and_evaluate` calls it first too, for callers without
`main`). Cheap by design: no TFDS build, no decoding, no model, no download, and no JAX,
TensorFlow or TFDS imported (only config_checks, data/catalog, data/domainbed_layout, paths
and the weights registry, models/hub), so a run with missing inputs stops within a second or
two of starting.

- Config: every error `config_checks.validate_config` finds (all, not only the first), the
  step labels, the evaluation augmentation, the dataset name, test domains and image size.
- Weights: a registered name (`hub.WEIGHTS`) is in the cache or answers a HEAD request within
  `hub.PROBE_TIMEOUT_S` (at $RICHFT_WEIGHTS_MIRROR when set); a local path is a file or a
  finished run's directory (a gs:// one is left to the run: no network here), unless the
  config pretrains it first (the demo's first run: `train.ensure_pretrained`), and then that
  run's own inputs are checked too.
- Dataset: prepared in the TFDS data dir (`catalog.is_prepared`: its version directory holds
  dataset_info.json, as TFDS's `is_prepared()` says; nothing is built), else preparable: a
  DomainBed photo set needs its folder, with every domain and class folder, in the manual
  dir; the embedded sets need nothing. Sets that TFDS downloads itself (`mnist` for
  rotated_mnist / colored_mnist, the catalog's `domainnet` for domainnet_official) are not
  checked.
- Workdir: it, or else its nearest existing ancestor, a directory this process can write to
  (`paths.unwritable`); a bucket URL (gs://, s3://, az://) is checked by the run's first
  write, any other URL refused.

A combine run has its own list (`combine.preflight_problems`: its runs' directories) from the
same checks of datasets and workdirs.

Every process checks its own inputs: each host reads its own data and weights.
"""

import dataclasses
import re
import time

import ml_collections
from absl import logging
from etils import epath

from richft_jax import config_checks, config_lib, paths, schedule
from richft_jax.data import catalog
from richft_jax.data import domainbed_layout as domainbed
from richft_jax.models import hub

# (workdir, config) pairs that passed `run` in this process: main checks before its imports,
# train.train_and_evaluate again for callers without main; the second time is free.
_PASSED: set[tuple[str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Problem:
    """One missing or inconsistent input: which, what is wrong with it, the fix."""

    what: str  # "config", "dataset 'pacs'", "weights 'vit_b16' (...)", "workdir".
    wrong: str
    fix: str  # The exact command, flag or variable that fixes it.

    def __str__(self) -> str:
        return f"{self.what}: {self.wrong}\n   Fix: {self.fix}"


class PreflightError(ValueError, FileNotFoundError):
    """Every problem the preflight found, in one message. Both a ValueError and an OSError,
    so code that caught the single errors these checks used to raise one at a time (a bad
    config value, a missing file, an unwritable workdir) still catches the list."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(message(self.problems))


def message(problems: list[Problem]) -> str:
    """The numbered list of problems, each with its fix."""
    lines = [
        f"Preflight: {len(problems)} problem(s); nothing was built, downloaded or written. "
        "Fix them and run the same command again."
    ]
    lines += [f"{i}. {p}" for i, p in enumerate(problems, 1)]
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises a PreflightError listing every problem of `check`; logs the time it took. Once
    per process for the same config and workdir."""
    key = (workdir, config.to_json_best_effort(sort_keys=True))
    if key in _PASSED:
        return
    start = time.monotonic()
    problems = check(config, workdir)
    if problems:
        raise PreflightError(problems)
    _PASSED.add(key)
    logging.info(
        "Preflight: config, weights, dataset and workdir checked in %.2f s.",
        time.monotonic() - start,
    )


def check(config: ml_collections.ConfigDict, workdir: str) -> list[Problem]:
    """Every problem with the inputs of a run of `config` into `workdir` (see the module doc)."""
    problems = config_problems(config)
    problems += weights_problems(config)
    problems += dataset_problems(config)
    problems += workdir_problems(workdir)
    return problems


# ----------------------------------------------------------------------------- the config
def config_problems(config: ml_collections.ConfigDict) -> list[Problem]:
    """config_checks.validate_config's errors, all of them, and the other checks the loop
    makes."""
    errors = list(config_checks.config_errors(config))
    data = config.data
    for check_one in (
        lambda: schedule.validate(config),
        lambda: config_checks.eval_augment(config),
        lambda: catalog.parse_test_domains(data.test_domains, catalog.domains_of(data.name)),
        lambda: catalog.check_image_size(data.get("image_size")),
    ):
        try:
            check_one()
        except ValueError as e:
            errors.append(e)
    return [Problem("config", str(e), config_fix(str(e))) for e in errors]


def config_fix(error: str) -> str:
    """The flag that fixes the config error `error` (it names the key and the valid values)."""
    key = re.search(r"config\.([\w.]+)", error)
    if key is None:  # e.g. "Unknown dataset 'x'; valid datasets are [...]".
        return "--config.data.name=one of the datasets listed."
    return f"--config.{key.group(1)}=VALUE (a valid one, as above) on the command line."


# ----------------------------------------------------------------------------- the weights
def weights_problems(config: ml_collections.ConfigDict) -> list[Problem]:
    """config.pretrained.path: registered weights cached or downloadable, a local file or run
    directory present, or one the config pretrains first (whose inputs are checked too)."""
    value = config.pretrained.get("path")
    published = config_checks.published_weights(value)
    if not value or (published is None and "://" in value):
        # No weights; a bucket URL is read by the run (no network here), another URL is a
        # config problem (validate_pretrained).
        return []
    if published is not None:
        return _published_problems(value)
    path = config_checks.pretrained_path(value)
    if path.is_file():
        return []
    try:
        config_checks.pretrained_checkpoint(path)
        return []
    except FileNotFoundError as e:
        pre = config.pretrained.get("pretrain_config")
        if not pre:
            names = ", ".join(hub.WEIGHTS)
            fix = (
                "--config.pretrained.path=FILE (published weights, .npz / .safetensors), a "
                f"finished run's workdir, or a registered name ({names})."
            )
            return [Problem("pretrained backbone", str(e), fix)]
    # train.ensure_pretrained pretrains it first, into `path`: check that run's inputs.
    pre_config = config_lib.load_config_file(pre)
    pre_config.data.data_dir = config.data.data_dir
    return [
        dataclasses.replace(p, what=f"{p.what} (of the pretraining run {pre} into {path})")
        for p in check(pre_config, str(path))
    ]


def _published_problems(name: str) -> list[Problem]:
    entry = hub.get(name)
    what = f"weights {name!r} ({entry.what})"
    try:
        path = hub.cache_file(name)
    except ValueError as e:  # RICHFT_CACHE is a URL: the message says what to set.
        wrong, fix = str(e).split(". ", 1)
        return [Problem(what, wrong + ".", fix)]
    if path.is_file():
        if broken := hub.incomplete(path, entry.fmt):
            wrong = f"{path} is not a complete {entry.fmt} file ({broken})."
            return [Problem(what, wrong, f"`rm {path}` (it is then downloaded again).")]
        return []
    url, failures = hub.probe(name)
    if url is not None:
        logging.info("Preflight: weights %r not cached; %s answers (downloaded next).", name, url)
        return []
    wrong = f"not in the cache ({path}) and not downloadable: {'; '.join(failures)}."
    fix = f"{hub.by_hand(name)}; or --config.pretrained.path=FILE, a local copy."
    return [Problem(what, wrong, fix)]


# ----------------------------------------------------------------------------- the dataset
def dataset_problems(config: ml_collections.ConfigDict) -> list[Problem]:
    """The dataset prepared in the TFDS data dir, or preparable (a DomainBed photo set: its
    folder in the manual dir, as the builder will read it)."""
    data = config.data
    if data.name not in domainbed.SPECS:
        return []  # Embedded (built here from packaged data), catalog, or unknown (config).
    skip, data_dir = data.get("skip_unreadable", False), data.get("data_dir")
    if catalog.is_prepared(data.name, data_dir, skip):
        return []
    spec = domainbed.SPECS[data.name]
    # Where TFDS's download manager looks (DatasetBuilder._make_download_manager).
    default = catalog.manual_dir(data_dir)
    manual = epath.Path(data.manual_dir) if data.get("manual_dir") else default
    what = f"dataset {data.name!r}"
    fix = (
        f"{domainbed.how_to_get(spec)} Here <data_dir>/downloads/manual/ is {default}/. "
        "Prepared in another TFDS data dir already: --config.data.data_dir=THAT_DIR."
    )
    root = domainbed.locate(manual, spec)
    if root is None:
        prepared = catalog.prepared_dir(data.name, data_dir, skip)
        wrong = f"not prepared in {prepared}, and " + domainbed.not_found(manual, spec)
        return [Problem(what, wrong, fix)]
    try:
        domainbed.check_layout(root, spec)
    except (FileNotFoundError, ValueError) as e:
        return [Problem(what, str(e), f"complete {root} from DomainBed's download: {fix}")]
    return []


# ----------------------------------------------------------------------------- the workdir
def workdir_problems(workdir: str) -> list[Problem]:
    """The workdir writable (or creatable), without creating it."""
    why = paths.unwritable(workdir)
    if why is None:
        return []
    if paths.is_remote(workdir):
        schemes = ", ".join(f"{s}://" for s in paths.STORAGE_SCHEMES)
        fix = f"--workdir=DIR, a local folder or a bucket URL ({schemes})."
    else:
        fix = "--workdir=DIR, a folder this process can write to (or make the one named writable)."
    return [Problem("workdir", why, fix)]
