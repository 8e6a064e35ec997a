"""How rich a pretrained demo backbone is, measured: one JSON record to compare backbones by
(the library of the `richft_jax.analysis.backbone_richness` command).

Issue 16 asks to choose the demo's backbone by measurements of its representation, not by
whether very-large dropout wins. For --backbone (`shipped`: the file the demo configs load; a
pinned .msgpack with its .json record beside it; or a finished `demo_pretrain` run directory)
the record holds:
- backbone: its path, sha256 (a file) and architecture (model name and kwargs);
- letters: the source task's test accuracy, as the pretraining run measured it at its end (its
  summary.json and results rows; a pinned file's record copies them, launch/pin_backbone.py);
- linear_probe: per digits domain D held out, `methods.lpft.linear_probe` on the frozen
  features of the three other domains (ID: their out splits; OOD: D's in split), the same
  probe `pin_backbone.py --probe` records (`linear_probes`), and the means over domains;
- runs: per fine-tuned run of --runs (each fine-tuned from this backbone, checked): the
  Taylor-model agreement of the network with its linearisation around θ0 and the feature
  distortion from θ0 (analysis.regime: `taylor`, `distortion`), ID and OOD;
- erm_vs_dropout: with one ERM run (dropout 0) and one dropout run on the same test domains,
  dropout's minus ERM's agreement and distortion;
- omitted: each part left out and why (its input was not given or not found); nothing is
  estimated in its place.
"""

import json
import os
import time
from collections.abc import Sequence

import ml_collections
import numpy as np
from etils import epath

from richft_jax import config_lib, evaluation, parallel, paths, results
from richft_jax import run as run_lib
from richft_jax.analysis import regime
from richft_jax.configs import demo_pretrain
from richft_jax.methods import lpft
from richft_jax.models import hub

SHIPPED = "shipped"  # --backbone's name for the file the demo configs load.
PROBE_HOW = (
    "per digits domain D, methods.lpft.linear_probe on the frozen features of the other three "
    "domains' in splits (C chosen on their out splits); accuracy on D's in split (trial_seed 0)"
)
DISTORTION_KEYS = ("relative_l2", "cosine", "cka")


def backbone_path(value: str) -> epath.Path:
    """--backbone as a path (`shipped`: the demo's shipped file); a FileNotFoundError naming it
    when it is neither a file nor a directory."""
    path = paths.path(demo_pretrain.shipped_backbone() if value == SHIPPED else value, "--backbone")
    if not (path.is_file() or path.is_dir()):
        raise FileNotFoundError(f"--backbone: {path} does not exist.")
    return path


def pinned_record(backbone: epath.Path) -> dict | None:
    """The .json record beside a pinned backbone file (pin_backbone.py's), None if absent."""
    record = backbone.parent / (backbone.stem + ".json")
    if not backbone.is_file() or not record.is_file():
        return None
    return json.loads(record.read_text())


def architecture(backbone: epath.Path) -> dict:
    """{"name", "kwargs"} of the backbone's model: from a pinned file's record or a run
    directory's config.json, which the probe's model must match (the load is strict)."""
    record = pinned_record(backbone)
    if record is not None:
        return record["model"]
    if backbone.is_dir():
        model = run_lib.read_config(backbone).model
        return {"name": model.name, "kwargs": model.kwargs.to_dict()}
    raise FileNotFoundError(
        f"--backbone: {backbone} has no .json record beside it naming its architecture "
        "(launch/pin_backbone.py writes one); give the pretraining run directory instead."
    )


def letters_accuracy(pretrain_run: str | os.PathLike) -> dict:
    """The letters accuracy a finished pretraining run measured at its end: its summary.json's
    last evaluation (test domain "test" = OOD) and its results rows at that step."""
    run = epath.Path(pretrain_run)
    summary = json.loads((run / "summary.json").read_text())
    last = summary["last"]
    return {
        "letters_test_accuracy": last["ood_accuracy"],
        "letters_validation_accuracy": last["id_accuracy"],
        "step": last["step"],
        "from": "the pretraining run's summary.json (last); its rows at that step below",
        "rows": [
            {k: row[k] for k in ("domain", "split", "accuracy", "num_examples")}
            for row in results.read_rows(run)
            if row["step"] == last["step"]
        ],
    }


def letters_of(backbone: epath.Path) -> tuple[dict | None, str]:
    """(letters accuracy, where it was read) of a run directory or a pinned file's record;
    (None, why) when neither holds it."""
    if backbone.is_dir():
        if not (backbone / "summary.json").is_file():
            return None, f"{backbone} has no summary.json (not a finished pretraining run)"
        return letters_accuracy(backbone), str(backbone / "summary.json")
    record = pinned_record(backbone)
    quality = (record or {}).get("quality", {})
    if "letters_test_accuracy" not in quality:
        return None, f"no letters accuracy in a .json record beside {backbone}"
    source = str(backbone.parent / (backbone.stem + ".json"))
    return {k: v for k, v in quality.items() if k != "linear_probe"}, source


def probe_config(
    backbone: str | os.PathLike,
    config: str | ml_collections.ConfigDict = "demo",
    data_dir: str | None = None,
    model: dict | None = None,
) -> ml_collections.ConfigDict:
    """The digits config the probes read data and build the model from (`config`, a name or a
    ConfigDict, copied), with `backbone` as its pretrained path and `model` its architecture."""
    c = config_lib.load_config_file(config) if isinstance(config, str) else config
    c = ml_collections.ConfigDict(c.to_dict())
    c.pretrained.path = os.fspath(backbone)
    c.data.data_dir = data_dir or c.data.data_dir
    if model is not None:
        c.model.name = model["name"]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in model["kwargs"].items()}
        c.model.kwargs = ml_collections.ConfigDict(kwargs)  # JSON's lists as the config's tuples.
    return c


def linear_probes(
    backbone: str | os.PathLike,
    data_dir: str | None = None,
    config: str | ml_collections.ConfigDict = "demo",
    model: dict | None = None,
) -> dict:
    """Per digits domain D, the demo's linear probe (`methods.lpft.linear_probe`, LP-FT's: L2
    strength chosen on the other domains' out splits, over config.lp_c_grid) on the backbone's
    frozen features, trained on the other three domains' in splits: its accuracy on D's in
    split (DomainBed's test accuracy with D held out)."""
    c = probe_config(backbone, config, data_dir, model)
    data = run_lib.load_data(c)
    net = run_lib.build_model(c, data.num_classes)
    variables = run_lib.init_variables(c, net, data)
    features_of = evaluation.features_on_mesh(net, c.data.normalize, parallel.make_mesh())
    by_split = {  # Each split's features once: every held-out domain reuses them.
        (d, s): evaluation.split_features(
            features_of, variables, [data.get(d, s)], c.data.eval_batch_size
        )
        for d in data.domains
        for s in ("in", "out")
    }

    def features(domains, split):
        xs, ys = zip(*(by_split[(d, split)] for d in domains), strict=True)
        return np.concatenate(xs), np.concatenate(ys)

    out = {}
    for held_out in data.domains:
        others = [d for d in data.domains if d != held_out]
        probe = lpft.linear_probe(
            *features(others, "in"), *features(others, "out"), data.num_classes, lpft.c_grid(c)
        )
        x, y = features([held_out], "in")
        accuracy = np.mean(np.argmax(x @ probe["kernel"] + probe["bias"], -1) == y)
        out[held_out] = {
            "test_accuracy": round(float(accuracy), 4),
            "id_validation_accuracy": round(probe["val_accuracy"], 4),
            "c": probe["c"],
        }
    return out


def probe_summary(per_domain: dict, c_grid: Sequence[float]) -> dict:
    """The probes' record: how, the C grid, per domain (`linear_probes`) and the means."""
    means = {
        f"mean_{k}": float(np.mean([v[k] for v in per_domain.values()]))
        for k in ("test_accuracy", "id_validation_accuracy")
    }
    return {"how": PROBE_HOW, "c_grid": list(c_grid), "domains": per_domain, **means}


def check_runs(run_paths: Sequence[str], backbone: epath.Path) -> list[epath.Path]:
    """--runs as run directories, each fine-tuned from `backbone` (the sha256 its config.json
    records for a file, else its pretrained path); an error naming the first that is missing,
    not a run, or fine-tuned from another backbone."""
    found = regime.expand_runs(run_paths)
    sha = hub.file_sha256(backbone) if backbone.is_file() else None
    for path in found:
        if not path.exists():
            raise FileNotFoundError(f"--runs: {path} does not exist.")
        pre = run_lib.read_config(path).pretrained
        recorded = pre.get("sha256")
        same = (
            recorded == sha
            if sha and recorded
            else bool(pre.get("path")) and paths.path(pre.path) == backbone
        )
        if not same:
            raise ValueError(
                f"--runs: {path} was fine-tuned from {pre.get('path')} (sha256 {recorded}), "
                f"not from the backbone measured, {backbone}: its θ0 is another network."
            )
    return found


def measure_run(path: epath.Path, mesh, max_examples: int | None, which: str, data_dir) -> dict:
    """One fine-tuned run's Taylor-model agreement and feature distortion around its θ0."""
    r = regime.load(str(path), which=which, data_dir=data_dir, mesh=mesh)
    return {
        "run": str(r.path),
        "method": r.config.method,
        "dropout_rate": float(r.config.dropout_rate),
        "test_domains": r.config.data.test_domains,
        "step": r.step,
        "taylor": regime.summarize(regime.taylor(r, mesh, max_examples), r.step),
        "feature_distortion": regime.distortion(r, max_examples),
    }


def erm_vs_dropout(runs: list[dict]) -> tuple[dict | None, str]:
    """(dropout's minus ERM's Taylor agreement and feature distortion, ID and OOD, ""), with
    exactly one ERM run (rate 0) and one dropout run on the same test domains; else (None, why)."""
    erm = [r for r in runs if r["dropout_rate"] == 0]
    drop = [r for r in runs if r["dropout_rate"] > 0]
    if len(erm) != 1 or len(drop) != 1:
        return None, f"{len(erm)} ERM and {len(drop)} dropout runs given, not one of each"
    e, d = erm[0], drop[0]
    if e["test_domains"] != d["test_domains"]:
        return None, f"test domains differ: {e['test_domains']} vs {d['test_domains']}"

    def diff(a: dict, b: dict) -> dict:
        return {k: b[k] - a[k] for k in ("id", "ood")}

    out = {"erm": e["run"], "dropout": d["run"], "dropout_minus_erm": {}}
    delta = out["dropout_minus_erm"]
    delta["taylor_agreement"] = diff(e["taylor"]["agreement"], d["taylor"]["agreement"])
    for k in DISTORTION_KEYS:
        fe, fd = e["feature_distortion"], d["feature_distortion"]
        delta[k] = {s: fd[s][k] - fe[s][k] for s in ("id", "ood")}
    return out, ""


def measure(
    backbone: str,
    runs: Sequence[str] = (),
    *,
    probe: bool = True,
    config: str | ml_collections.ConfigDict = "demo",
    data_dir: str | None = None,
    max_examples: int | None = None,
    which: str = "best",
) -> dict:
    """The richness record of `backbone` (module doc); every input is checked before anything
    is computed, and a part whose input is missing is named in `omitted`, not filled in."""
    path = backbone_path(backbone)
    model = architecture(path)
    run_dirs = check_runs(runs, path) if runs else []
    record = {
        "backbone": {
            "given": backbone,
            "path": str(path),
            "sha256": hub.file_sha256(path) if path.is_file() else None,
            "model": model,
        },
        "omitted": {},
        "timings_s": {},
    }
    letters, source = letters_of(path)
    if letters is None:
        record["omitted"]["letters"] = source
    else:
        record["letters"] = {**letters, "source": source}
    start = time.perf_counter()
    if probe:
        c = probe_config(path, config, data_dir, model)
        per_domain = linear_probes(path, data_dir, c, model)
        summary = probe_summary(per_domain, lpft.c_grid(c))
        record["linear_probe"] = {"config": c.config_name, **summary}
        record["timings_s"]["linear_probe"] = time.perf_counter() - start
    else:
        record["omitted"]["linear_probe"] = "not asked for (--noprobe)"
    if not run_dirs:
        record["omitted"]["runs"] = "no --runs given"
        return record
    start, mesh = time.perf_counter(), parallel.make_mesh()
    record["runs"] = [measure_run(p, mesh, max_examples, which, data_dir) for p in run_dirs]
    record["max_examples"], record["which"] = max_examples, which
    record["timings_s"]["runs"] = time.perf_counter() - start
    compared, why = erm_vs_dropout(record["runs"])
    if compared is None:
        record["omitted"]["erm_vs_dropout"] = why
    else:
        record["erm_vs_dropout"] = compared
    return record
