"""DomainBed's model selection over run records: what each run's selected step scores under
training-domain validation and the oracle, which run of a group (hyper-parameter settings)
wins, and the error bar over trial seeds, computed as DomainBed's model_selection.py and
collect_results.py compute them (the rules in full: richft_jax/report.py's docstring).
"""

import collections
import dataclasses
import json
import math
import os
import posixpath
import re

import numpy as np
from etils import epath

from richft_jax import paths as paths_lib
from richft_jax import results

SELECTIONS = ("training_domain_validation", "oracle")


HPARAMS = ("optim.lr", "optim.weight_decay")  # The paper's grid: what tells settings apart.
# A run's sub-folders that hold no runs, not listed (one listing per folder on a bucket): its
# checkpoints (checkpoints.LATEST, checkpoints.BEST) and its results' round objects.
NO_RUNS = ("checkpoints", "best", results.ROUNDS)
# A pretrained checkpoint file's suffixes (models/pretrained.py's formats; an Orbax checkpoint
# is a directory), left out of its backbone's label; the label of runs with no backbone.
CHECKPOINT_SUFFIXES = (".msgpack", ".npz", ".safetensors")
NO_BACKBONE = "from scratch"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run's (or one of its methods') selected numbers under both selection rules."""

    path: str
    dataset: str
    # As the rows name it, with " [BACKBONE]" when its runs hold several backbones and then
    # " (p=RATE)" when they hold several rates: "erm [demo_small_resnet_glyphs] (p=0.5)".
    method: str
    test_domains: str
    trial_seed: int
    scores: dict  # selection -> (selection score, ood accuracy, id accuracy)
    domains: tuple[str, ...] = ()  # The dataset's domains, in the order its rows list them.
    setting: tuple = ()  # The run's hyper-parameter values (HPARAMS, from its config.json).
    dropout_rate: float | None = None  # The config's penultimate dropout rate.
    base_method: str = ""  # The rows' method name.
    backbone: str = ""  # The pretrained backbone: its sha256, else its path; "" for none.
    backbone_label: str = ""  # Its readable name (`_label_backbones`).


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def _run_config(run_dir: epath.Path) -> dict:
    """The run's config.json, flattened to dotted keys ({} when it has none)."""
    try:
        text = (run_dir / "config.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return _flat(json.loads(text))


def _backbone(config: dict) -> tuple[str, str]:
    """(identity, name) of the run's pretrained backbone: its sha256 when recorded, else its
    path; its file's name less a checkpoint suffix (a directory's name). ("", "") for none."""
    path = str(config.get("pretrained.path") or "")
    name = posixpath.basename(path.rstrip("/"))
    stem, suffix = posixpath.splitext(name)
    identity = str(config.get("pretrained.sha256") or path)
    return identity, stem if suffix in CHECKPOINT_SUFFIXES else name


def _record(path: epath.Path, method: str, rows: list[dict], config: dict, hparams) -> RunRecord:
    selection = results.select_training_domain_validation(rows)
    best, last = selection["selected"], selection["last"]
    rate = config.get("dropout_rate")
    backbone, name = _backbone(config)
    return RunRecord(
        path=str(path),
        dataset=rows[0].get("dataset", "?"),
        method=method,
        test_domains=",".join(rows[0]["test_domains"]),
        trial_seed=rows[0]["trial_seed"],
        domains=tuple(dict.fromkeys(r["domain"] for r in rows)),
        scores={
            "training_domain_validation": (
                best["id_accuracy"],
                best["ood_accuracy"],
                best["id_accuracy"],
            ),
            "oracle": (last["ood_out_accuracy"], last["ood_accuracy"], last["id_accuracy"]),
        },
        setting=tuple(repr(config.get(k)) for k in hparams),
        dropout_rate=None if rate is None else float(rate),
        base_method=method,
        backbone=backbone,
        backbone_label=name,
    )


def _label_backbones(records: list[RunRecord]) -> list[RunRecord]:
    """Each backbone's label: its file's name (the first in sorted order when it was read from
    several paths), with its sha256's first 8 digits when another backbone shares that name
    (its whole path without a sha256); NO_BACKBONE for none."""
    names = collections.defaultdict(set)
    for r in records:
        names[r.backbone].add(r.backbone_label)
    label = {b: min(n) or b[:8] for b, n in names.items() if b}
    shared = collections.Counter(label.values())
    for b, name in label.items():
        if shared[name] > 1:
            label[b] = f"{name}@{b[:8]}" if re.fullmatch(r"[0-9a-f]{64}", b) else f"{name}@{b}"
    label[""] = NO_BACKBONE
    return [dataclasses.replace(r, backbone_label=label[r.backbone]) for r in records]


def _name_apart(records: list[RunRecord], value, suffix) -> list[RunRecord]:
    """A method whose runs hold several `value(r)` gets one name per value ("m" + `suffix(r)`,
    None: its name kept): those are compared, never selected among like hyper-parameters."""
    values = collections.defaultdict(set)
    for r in records:
        values[r.method].add(value(r))
    return [
        dataclasses.replace(r, method=r.method + suffix(r))
        if len(values[r.method]) > 1 and suffix(r) is not None
        else r
        for r in records
    ]


def _name_backbones(records: list[RunRecord]) -> list[RunRecord]:
    """One name per pretrained backbone: "m [backbone]"."""
    return _name_apart(records, lambda r: r.backbone, lambda r: f" [{r.backbone_label}]")


def _name_rates(records: list[RunRecord]) -> list[RunRecord]:
    """One name per dropout rate, after its backbone's: "m [backbone] (p=0.5)"."""
    return _name_apart(
        records,
        lambda r: r.dropout_rate,
        lambda r: None if r.dropout_rate is None else f" (p={r.dropout_rate:g})",
    )


def _runs_under(folder: epath.Path) -> list[epath.Path]:
    """The run directories (holding results rows) at or below `folder`, as rglob found them:
    symbolic links to folders are not followed; `NO_RUNS` folders are not listed."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    names = {e.name for e in entries}
    found = [folder] if results.RESULTS in names or results.ROUNDS in names else []
    for entry in entries:
        if entry.name in NO_RUNS or (not paths_lib.is_remote(entry) and os.path.islink(entry)):
            continue
        if entry.is_dir():
            found += _runs_under(entry)
    return found


def run_sources(given: list[str | os.PathLike]) -> list[tuple[epath.Path, epath.Path]]:
    """(run directory, what to read its rows from: itself or a given results file) of every run
    under `given`, local or gs://, in the order they are read: each argument in turn (a glob
    pattern expanded, its matches sorted), the runs under each sorted by the path of their
    results.jsonl."""
    found = []
    for value in given:
        for p in paths_lib.expand(value, "run directory"):
            if p.is_file():
                found.append((p.parent, p))
            elif p.is_dir():
                runs = sorted(_runs_under(p), key=lambda d: d / results.RESULTS)
                found += [(d, d) for d in runs]
    return found


def run_records(paths: list[str], hparams: tuple[str, ...] = HPARAMS) -> list[RunRecord]:
    """One record per (run, method) found under `paths` (run directories, their parents or
    results files; local or gs://; glob patterns expanded: `run_sources`), its
    hyper-parameter setting read from the run's config.json (the values of `hparams`, dotted
    config keys), and its pretrained backbone (a method named per backbone and per dropout
    rate where its runs hold several)."""
    records = []
    for run_dir, source in run_sources(paths):
        by_method = collections.defaultdict(list)
        for r in results.read_rows(source):
            by_method[r["method"]].append(r)
        config = _run_config(run_dir)
        if config.get("task") == "combine" and "pretrained.path" not in config:
            # Along-run combinations (launch/sweep.py: RUN/along_run) of its run's checkpoints
            # have that run's backbone.
            parent = _run_config(run_dir.parent)
            config |= {k: v for k, v in parent.items() if k.startswith("pretrained.")}
        for method, rows in by_method.items():
            records.append(_record(run_dir, method, rows, config, hparams))
    return _name_rates(_name_backbones(_label_backbones(records)))


ERROR_BARS = {
    "domainbed": "± = DomainBed's standard error (std with divisor n over seeds / √n)",
    "sample": "± = sample standard error (std with divisor n − 1 over seeds / √n)",
}


def mean_se(xs: list[float], error_bar: str = "domainbed") -> tuple[float, float]:
    """Mean and error bar of `xs`: DomainBed's format_mean, np.std(x / sqrt(n)) with divisor n
    ("domainbed", 0 for one value), or the sample standard error ("sample", NaN for one)."""
    a = np.asarray(xs, dtype=float)
    if error_bar == "domainbed":
        return float(np.mean(a)), float(np.std(a / np.sqrt(len(a))))
    if error_bar == "sample":
        se = float(np.std(a, ddof=1) / np.sqrt(len(a))) if len(a) > 1 else math.nan
        return float(np.mean(a)), se
    raise ValueError(f"error_bar={error_bar!r}: not one of {sorted(ERROR_BARS)}.")


def _validation_key(record: RunRecord, selection: str) -> float:
    """A run's validation score as DomainBed's Q.sorted orders it: NaN lowest."""
    score = record.scores[selection][0]
    return -math.inf if math.isnan(score) else score


def select_run(runs: list[RunRecord], selection: str) -> RunRecord:
    """DomainBed's hparams_accs(...)[0]: the runs (in reading order) stably sorted by validation
    score and reversed, so among tied runs the last one read wins."""
    return sorted(runs, key=lambda r: _validation_key(r, selection))[::-1][0]


def aggregate(records: list[RunRecord], selection: str) -> dict:
    """{(dataset, method, test_domains): {"ood": [...], "id": [...], "trial_seeds": [...]}},
    one entry per trial seed (ascending), from the run `select_run` picks for that seed."""
    groups = collections.defaultdict(list)
    for r in records:
        groups[(r.dataset, r.method, r.test_domains, r.trial_seed)].append(r)
    out = collections.defaultdict(lambda: {"ood": [], "id": [], "trial_seeds": []})
    for (dataset, method, test, seed), runs in sorted(groups.items()):
        best = select_run(runs, selection)
        out[(dataset, method, test)]["ood"].append(best.scores[selection][1])
        out[(dataset, method, test)]["id"].append(best.scores[selection][2])
        out[(dataset, method, test)]["trial_seeds"].append(seed)
    return out
