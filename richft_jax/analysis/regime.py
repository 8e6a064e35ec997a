"""The linear regime of fine-tuning, measured on finished runs: the library behind the
`richft_jax.analysis.linear_regime` command and the Colab notebook.

For each run (a fine-tuning workdir), the run builder (`richft_jax.run`) rebuilds its data and
model, restores θ_ft (its selected `best/` checkpoint, or `--which=latest`) and rebuilds θ0,
the state train.py started from (the pretrained backbone of its config, or `--pretrained`,
with the run's own initial head; LP-FT's probe head for LP-FT runs), then writes into `out`,
each as PNG + JSON:
- taylor_agreement: the fine-tuned network vs its Taylor model around θ0, per split;
- taylor_trajectory: the same (ID / OOD means) along the checkpoints kept in RUN/checkpoints;
- interpolation: weight vs representation interpolation, accuracy per domain along α;
- linear_finetune: linear fine-tuning (the run's dropout rate) vs the run's fine-tuning;
- feature_distortion (summary.json only): how far the penultimate features moved from θ0's,
  on ID and OOD splits (relative L2, cosine, linear CKA): the LP-FT paper's explanation, for
  runs that did not measure it at their end (`measure.feature_distortion`);
and summary.json with the headline numbers. Follows Zhang & Bottou (arXiv 2403.00946).
Run paths, `out` and `pretrained`: local paths or gs:// URLs ('gs://BUCKET/sweep/*/erm' globs
expanded, their matches sorted).
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from richft_jax import checkpoints, config_checks, parallel, paths, results, steps
from richft_jax import run as run_lib
from richft_jax.analysis import (
    feature_distortion,
    interpolation,
    linear_finetune,
    linearization,
    plots,
)
from richft_jax.data import pipeline

ANALYSES = ("taylor", "trajectory", "interpolation", "linear_finetune", "feature_distortion")
DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclasses.dataclass
class Run:
    """A finished run ready for analysis: its model, data, θ0 and selected θ_ft."""

    path: epath.Path  # The run directory, local (absolute) or gs://.
    name: str
    config: ml_collections.ConfigDict
    model: Any
    data: pipeline.DomainData
    v0: dict
    v_ft: dict
    step: int
    pretrained: str | None  # θ0's backbone (None: the run trained from its random init).


def load(
    path: str,
    *,
    name: str | None = None,
    which: str = "best",
    pretrained: str | None = None,
    data_dir: str | None = None,
    mesh=None,
) -> Run:
    """The run as the run builder rebuilds it (`run.from_workdir`: its data, model and θ_ft)
    with θ0 = `run.init_variables`, the state train.py started from: the pretrained backbone
    (`pretrained` overrides the config's) with the run's own initial head (LP-FT: the probe's)."""
    built = run_lib.from_workdir(path, which, data_dir)
    config = built.config
    if pretrained:
        config = ml_collections.ConfigDict(config.to_dict())  # The run's config stays as it was.
        config.pretrained.path = _resolved(pretrained)
    v0 = run_lib.init_variables(config, built.model, built.data, mesh)
    return Run(
        path=built.path,
        name=name or built.config.method,
        config=built.config,
        model=built.model,
        data=built.data,
        v0=v0,
        v_ft=built.variables,
        step=built.step,
        pretrained=_resolved(config.pretrained.path),
    )


def _resolved(path: str | None) -> str | None:
    """An absolute local path (Orbax reads those only) or a gs:// URL as given; registered
    weight names stay names."""
    if not path or config_checks.published_weights(path) is not None:
        return path
    return str(paths.path(path, "--pretrained"))


def distortion(run: Run, max_examples: int | None = None) -> dict:
    """Feature distortion between θ0 and θ_ft (analysis.feature_distortion): ID, OOD, splits."""
    features = jax.jit(steps.model_features(run.model, run.config.data.normalize))
    return feature_distortion.feature_distortion(
        lambda v, batch: features(v, batch["image"]),
        run.v0,
        run.v_ft,
        run.data,
        run.config.data.eval_batch_size,
        max_examples,
    )


@steps.jit_per_model
def taylor_sums(model, normalize: str) -> Callable:
    """The jitted Taylor sums of one architecture, shared by its runs."""
    return linearization.make_taylor_sums(model, normalize)


def taylor(run: Run, mesh, max_examples: int | None = None, v: dict | None = None) -> list[dict]:
    """Per-split rows: the network (θ_ft, or `v`) against its Taylor model around θ0."""
    sums = taylor_sums(run.model, run.config.data.normalize)
    return linearization.taylor_measurements(
        sums,
        run.v0,
        run.v_ft if v is None else v,
        run.data,
        run.config.data.eval_batch_size,
        mesh,
        max_examples,
    )


def summarize(rows: list[dict], step: int) -> dict:
    """ID / OOD means of each Taylor measurement (results.id_ood)."""
    keys = (
        "agreement",
        "network_accuracy",
        "taylor_accuracy",
        "logits_relative_distance",
        "features_relative_distance",
    )
    return {"step": step, **{k: results.id_ood(rows, k) for k in keys}}


def kept_checkpoints(run: Run) -> dict[int, epath.Path]:
    """{step: directory} of the finished checkpoints kept in RUN/checkpoints (the run keeps
    `keep_checkpoints` of them), as Orbax counts them (paths.finished_step_dirs): a step a
    killed run left half-written on a bucket (no commit file there) is not one."""
    ckpt = run.path / checkpoints.LATEST
    return paths.finished_step_dirs(ckpt) if ckpt.is_dir() else {}


def checkpoint_steps(run: Run) -> list[int]:
    """The steps of `kept_checkpoints`, ascending."""
    return sorted(kept_checkpoints(run))


def trajectory(run: Run, mesh, max_examples: int | None = None) -> list[dict]:
    """Taylor measurements (ID / OOD) at θ0 (step 0) and at each kept checkpoint of the run."""
    sums = taylor_sums(run.model, run.config.data.normalize)
    kept = kept_checkpoints(run)
    out = []
    for step in [0, *sorted(kept)]:
        v = run.v0 if step == 0 else run_lib.restore(kept[step])[1]
        rows = linearization.taylor_measurements(
            sums, run.v0, v, run.data, run.config.data.eval_batch_size, mesh, max_examples
        )
        out.append(summarize(rows, step))
    return out


def interpolate(
    run: Run, alphas: Sequence[float], mesh, max_examples: int | None = None
) -> list[dict]:
    """Weight and representation interpolation rows between θ0 (α = 1) and θ_ft (α = 0)."""
    return interpolation.interpolation_curves(
        run.model,
        run.v0,
        run.v_ft,
        run.data,
        alphas,
        run.config.data.normalize,
        run.config.data.eval_batch_size,
        mesh,
        max_examples,
    )


def finetune_selection(run: Run) -> dict:
    """The run's own training-domain-validation selection, from its results rows."""
    rows = results.read_rows(run.path)
    return results.select_training_domain_validation(rows, run.config.method)["selected"]


def linear_ft(
    run: Run, mesh, max_examples: int | None = None, parts: list | None = None, **kwargs
) -> dict:
    """Linear fine-tuning on θ0's frozen block outputs, with the run's dropout rate, against
    the run's fine-tuning (both selected by training-domain validation)."""
    if parts is None:
        parts = extract_parts(run, mesh, max_examples)
    kwargs.setdefault("dropout_rate", float(run.config.dropout_rate))
    kwargs.setdefault("batch_size_per_domain", int(run.config.data.batch_size_per_domain))
    kwargs.setdefault("seed", int(run.config.seed))
    out = linear_finetune.train_linear_finetune(parts, run.data.num_classes, **kwargs)
    return {
        "finetune": finetune_selection(run),
        "linear_finetune": out["selection"]["selected"],
        "linear_finetune_curve": out["selection"]["curve"],
        "combine": out["combine"],
        "sites": out["widths"],
        "settings": kwargs,
        "max_examples": max_examples,
    }


def extract_parts(
    run: Run, mesh, max_examples: int | None = None, sites=linear_finetune.DEFAULT_SITES
) -> list[dict]:
    """θ0's pooled block outputs on every split (extracted once, shared by runs on one θ0)."""
    return linear_finetune.extract(
        run.model,
        run.v0,
        run.data,
        sites,
        run.config.data.normalize,
        run.config.data.eval_batch_size,
        mesh,
        max_examples,
    )


def parts_key(run: Run) -> str:
    """What θ0's block outputs depend on (the backbone, the data and its split and labels):
    runs with equal keys share one extraction."""
    c = run.config
    return json.dumps(
        {
            "pretrained": run.pretrained,
            "seed": None if run.pretrained else c.seed,  # θ0's backbone is the random init.
            "data": c.data.to_dict(),
            "trial_seed": c.trial_seed,
            "label_noise": c.get("label_noise", {}),
            "model": c.model.to_dict(),
        },
        sort_keys=True,
        default=str,
    )


def expand_runs(run_paths: Sequence[str]) -> list[epath.Path]:
    """--runs as paths, in order, each glob pattern (e.g. gs://BUCKET/sweep/*/erm: no shell
    expands it on a bucket) replaced by its sorted matches; an error naming a pattern that
    matches nothing, or no runs at all."""
    expanded = []
    for value in run_paths:
        found = paths.expand(value, "--runs")
        if not found:
            raise FileNotFoundError(f"--runs: {value!r} matches no run directory.")
        expanded += found
    if not expanded:
        raise ValueError("--runs is empty: give comma-separated run directories.")
    return expanded


def analyze(
    run_paths: Sequence[str],
    out: str | epath.PathLike,
    *,
    analyses: Sequence[str] = ANALYSES,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    max_examples: int | None = None,
    which: str = "best",
    pretrained: str | None = None,
    data_dir: str | None = None,
    lft: dict | None = None,
) -> dict:
    """Runs the chosen analyses on each run; writes figures (PNG + JSON) and summary.json
    into `out`; returns the summary (headline numbers per run) and the figure paths."""
    unknown = set(analyses) - set(ANALYSES)
    if unknown:
        raise ValueError(f"--analyses: unknown {sorted(unknown)}; known {ANALYSES}.")
    run_paths = expand_runs(run_paths)
    out = paths.make_dirs(out, "--out")  # Also when no analysis draws a figure.
    mesh = parallel.make_mesh()
    runs, names = [], set()
    for p in run_paths:
        run = load(p, which=which, pretrained=pretrained, data_dir=data_dir, mesh=mesh)
        base, i = run.name, 1
        while run.name in names:  # Two runs of one method: name them apart.
            i += 1
            run.name = f"{base}_{i}"
        names.add(run.name)
        runs.append(run)
    summary = {
        r.name: {"run": str(r.path), "step": r.step, "pretrained": str(r.pretrained)} for r in runs
    }
    figures = {}
    if "taylor" in analyses:
        per_run = {r.name: taylor(r, mesh, max_examples) for r in runs}
        for r in runs:
            summary[r.name]["taylor"] = summarize(per_run[r.name], r.step)
        figures["taylor_agreement"] = plots.taylor_agreement(per_run, out / "taylor_agreement")
    if "trajectory" in analyses:
        per_run = {r.name: trajectory(r, mesh, max_examples) for r in runs}
        figures["taylor_trajectory"] = plots.taylor_trajectory(per_run, out / "taylor_trajectory")
    if "interpolation" in analyses:
        per_run = {r.name: interpolate(r, alphas, mesh, max_examples) for r in runs}
        for r in runs:
            summary[r.name]["interpolation"] = {
                kind: {
                    str(a): results.id_ood(
                        [x for x in per_run[r.name] if x["kind"] == kind and x["alpha"] == a],
                        "accuracy",
                    )
                    for a in sorted({x["alpha"] for x in per_run[r.name]})
                }
                for kind in interpolation.KINDS
            }
        figures["interpolation"] = plots.interpolation(per_run, out / "interpolation")
    if "linear_finetune" in analyses:
        per_run, cache = {}, {}
        for r in runs:
            key = parts_key(r)
            if key not in cache:
                cache[key] = extract_parts(r, mesh, max_examples)
            per_run[r.name] = linear_ft(r, mesh, max_examples, cache[key], **dict(lft or {}))
            summary[r.name]["linear_finetune"] = {
                k: per_run[r.name][k] for k in ("finetune", "linear_finetune", "combine")
            }
        figures["linear_finetune"] = plots.linear_finetune(per_run, out / "linear_finetune")
    if "feature_distortion" in analyses:
        for r in runs:
            summary[r.name]["feature_distortion"] = distortion(r, max_examples)
    results.write_json_atomic(out / "summary.json", summary)
    logging.info("Linear-regime summary: %s", json.dumps(summary, indent=1))
    return {"summary": summary, "figures": {k: str(v) for k, v in figures.items()}}
