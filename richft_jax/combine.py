"""Restores K fine-tuned runs and evaluates their combinations in weight and output space.

  python -m richft_jax.main --config=configs/combine.py --workdir=DIR \
      --config.checkpoints=RUN1,RUN2,RUN3

Each RUN is a fine-tuning workdir, local or gs:// (so is --workdir): the run builder
(`richft_jax.run`) rebuilds its data and model from its config.json exactly as training built
them (image size, in/out split, label noise), and restores its selected (`best/`) or latest
(`checkpoints/`) checkpoint. A step directory RUN/checkpoints/STEP selects that step:
ensembles and soups of the checkpoints saved every N steps along one run (keep them with
--config.keep_checkpoints). Writes results.jsonl rows like a training run, with `method`
naming the combination, and a summary.json of ID / OOD accuracy per combination. Held-out
scores (greedy soup order and acceptance) use only the training domains' out splits, never
the test domain.
"""

import json
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from richft_jax import evaluation, parallel, preflight, results, run, steps
from richft_jax import workdir as workdir_lib
from richft_jax.methods import weight_space as ws

COMBINATIONS = (
    "individual",
    "uniform_soup",
    "greedy_soup",
    "ensemble_sum_logits",
    "ensemble_mean_probs",
    "interpolation",
)
# What the runs must share to be combined: the same data (domains, in/out split, image size)
# and the same architecture.
SHARED = (
    "data.name",
    "data.test_domains",
    "data.holdout_fraction",
    "data.image_size",
    "trial_seed",
    "model.name",
)


def _get(config: ml_collections.ConfigDict, key: str):
    """config[key] for a dotted key, None where a (older) config.json has no such field."""
    value = config
    for part in key.split("."):
        value = value.get(part) if value is not None else None
    return value


def restore_runs(config: ml_collections.ConfigDict) -> tuple[list[str], list[tuple]]:
    """(run dirs, [(config, variables, step)] per run) of config.checkpoints, checked to share
    `SHARED` and compatible parameter trees."""
    run_dirs = [r for r in config.checkpoints.split(",") if r]
    if not run_dirs:
        raise ValueError("config.checkpoints is empty: give comma-separated run directories.")
    if config.which not in ("best", "latest"):
        raise ValueError(f"config.which={config.which!r} is not 'best' or 'latest'.")
    loaded = []
    for r in run_dirs:
        try:
            loaded.append(run.restore(r, config.which))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"config.checkpoints: {e}") from None
    base = loaded[0][0]
    for r, (c, _, _) in zip(run_dirs, loaded, strict=True):
        for key in SHARED:
            a, b = _get(base, key), _get(c, key)
            if a != b:
                raise ValueError(
                    f"config.checkpoints: {r} has {key}={b!r}, but {run_dirs[0]} has {a!r}."
                )
    ws.check_compatible([v for _, v, _ in loaded], run_dirs)
    return run_dirs, loaded


def preflight_problems(config: ml_collections.ConfigDict, workdir: str) -> list:
    """The preflight (preflight.py) of a combine run, every problem at once: config.combinations,
    .checkpoints and .which, each run's config.json and checkpoint, the first run's dataset,
    the workdir. Nothing is restored."""
    problems = []

    def config_problem(wrong: str, fix: str | None = None) -> None:
        problems.append(preflight.Problem("config", wrong, fix or preflight.config_fix(wrong)))

    unknown = sorted(set(config.combinations.split(",")) - set(COMBINATIONS))
    if unknown:
        config_problem(f"config.combinations: unknown {unknown}; known {COMBINATIONS}.")
    run_dirs = [r for r in config.checkpoints.split(",") if r]
    if not run_dirs:
        config_problem("config.checkpoints is empty.", "--config.checkpoints=RUN1,RUN2,...")
    if config.which not in ("best", "latest"):
        config_problem(f"config.which={config.which!r} is not 'best' or 'latest'.")
        run_dirs = []  # Which checkpoint to look for is not known.
    first = None
    for r in run_dirs:
        try:
            base = run.read_config(run.checkpoint_dirs(r, config.which)[0])
        except (FileNotFoundError, ValueError) as e:
            fix = "--config.checkpoints=finished run directories (or RUN/checkpoints/STEP)."
            problems.append(preflight.Problem(f"run {r!r}", str(e), fix))
            continue
        first = base if first is None else first
    if first is not None:
        if config.get("data_dir"):  # As the data is loaded: run.load_data(base, data_dir).
            first.data.data_dir = config.data_dir
        problems += preflight.dataset_problems(first)
    return problems + preflight.workdir_problems(workdir)


def combine_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the configured combinations of the runs in config.checkpoints."""
    start = time.time()
    if problems := preflight_problems(config, workdir):  # Before anything is restored.
        raise preflight.PreflightError(problems)
    combos = config.combinations.split(",")
    run_dirs, loaded = restore_runs(config)
    base, variables = loaded[0][0], [v for _, v, _ in loaded]
    workdir = workdir_lib.prepare_workdir(workdir, config)

    # The runs' own data (image size, holdout, label noise...) and model: the run builder's.
    data = run.load_data(base, config.data_dir)
    mesh = parallel.make_mesh()
    model = run.build_model(base, data.num_classes)
    logits = steps.model_logits(model)
    single = jax.jit(steps.make_eval_step(logits, base.data.normalize))
    batch_size = base.data.eval_batch_size

    def evaluate(step_fn, v, splits=None):  # The runs' own split limits: comparable rows.
        d = data if splits is None else data.with_splits(splits)
        return evaluation.evaluate(
            step_fn,
            v,
            d,
            batch_size,
            mesh,
            max_examples=base.data.eval_max_examples,
            train_in_max=base.data.eval_train_in_max_examples,
        )  # No augmentation: evaluate's default.

    held_out = data.id_splits()  # Greedy soup's scores: ID only, never the test domain.

    def score(v) -> float:
        return float(np.mean([m["accuracy"] for _, m in evaluate(single, v, held_out)]))

    meta = {
        "seed": base.seed,
        "trial_seed": base.trial_seed,
        "test_domains": list(data.test_domains),
        "dropout_rate": float(base.dropout_rate),
        "config_name": config.config_name,
        "dataset": data.name,
        "step": max(s for _, _, s in loaded),
        "num_models": len(loaded),
        "base_method": base.method,
    }
    rows = []

    def add(name: str, evals, **extra):
        rows.extend(results.eval_rows(evals, **meta, method=config.method_prefix + name, **extra))

    scores = None
    if "individual" in combos or "greedy_soup" in combos:
        scores = []
        for r, v in zip(run_dirs, variables, strict=True):
            # Greedy soup alone needs only the held-out splits: skip the rest (K evaluations).
            evals = evaluate(single, v, None if "individual" in combos else held_out)
            scores.append(float(np.mean([m["accuracy"] for s, m in evals if s in held_out])))
            if "individual" in combos:
                add("individual", evals, member=str(r))
    if "uniform_soup" in combos:
        add("uniform_soup", evaluate(single, ws.uniform_soup(variables)))
    if "greedy_soup" in combos:
        soup, kept = ws.greedy_soup(variables, scores, score, strict=config.greedy_strict)
        add("greedy_soup", evaluate(single, soup), members=[run_dirs[i] for i in kept])
    per_pass = ws.models_per_pass(config.models_per_pass)
    for combine in ("sum_logits", "mean_probs"):
        if f"ensemble_{combine}" in combos:
            members = lambda v, x, c=combine: ws.ensemble_logits(logits, v, x, c, per_pass)  # noqa: E731
            ensemble = parallel.per_device(members, mesh)  # Each device its share of the batch.
            step_fn = jax.jit(steps.make_eval_step(ensemble, base.data.normalize))
            add(f"ensemble_{combine}", evaluate(step_fn, ws.stack(variables)))
    if "interpolation" in combos and len(variables) >= 2:
        for alpha in config.interpolation_alphas:
            v = ws.interpolate(variables[0], variables[1], alpha)
            add("interpolation", evaluate(single, v), alpha=float(alpha))

    summary = {"runs": run_dirs, "which": config.which, "wall_time_s": time.time() - start}
    summary.update(summarize(rows))
    if jax.process_index() == 0:
        results.append_rows(workdir, rows)
        results.write_json_atomic(workdir / results.SUMMARY, summary)
    logging.info("Combinations: %s", json.dumps(summary, indent=1))
    return summary


def summarize(rows: list[dict]) -> dict:
    """{method: {member or alpha (or ""): {"id_accuracy", "ood_accuracy"}}} of the rows."""
    out = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        groups = {}
        for r in rows:
            if r["method"] == name:
                groups.setdefault(r.get("member", r.get("alpha", "")), []).append(r)
        out[name] = {}
        for k, g in groups.items():
            m = results.id_ood(g, "accuracy")
            out[name][str(k)] = {"id_accuracy": m["id"], "ood_accuracy": m["ood"]}
    return out
