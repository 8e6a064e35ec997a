"""Restores K fine-tuned runs and evaluates their combinations in weight and output space.

  python -m richft_jax.main --config=configs/combine.py --workdir=DIR \
      --config.checkpoints=RUN1,RUN2,RUN3

Each RUN is a fine-tuning workdir (its config.json says how to rebuild the model and data);
its selected (`best/`) or latest (`checkpoints/`) checkpoint is restored with Orbax. A step
directory RUN/checkpoints/STEP selects that step: ensembles and soups of the checkpoints
saved every N steps along one run (keep them with --config.keep_checkpoints). Writes
results.jsonl rows like a training run, with `method` naming the combination, and a
summary.json of ID / OOD accuracy per combination. Held-out scores (greedy soup order and
acceptance) use only the training domains' out splits, never the test domain.
"""

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from richft_jax import checkpoints, parallel, results, train
from richft_jax.data import pipeline
from richft_jax.methods import weight_space as ws
from richft_jax.models import registry

COMBINATIONS = (
    "individual",
    "uniform_soup",
    "greedy_soup",
    "ensemble_sum_logits",
    "ensemble_mean_probs",
    "interpolation",
)


def load_run(path: str, which: str = "best") -> tuple[ml_collections.ConfigDict, dict, int]:
    """(run config, {"params", "batch_stats"}, step) of a run's best or latest checkpoint, or
    of one step directory (RUN/checkpoints/STEP: ensembles and averages along one run)."""
    path = pathlib.Path(path).expanduser()
    if (path / "state").is_dir():
        run, step_dir = path.parent.parent, path
    else:
        sub = {"best": checkpoints.BEST, "latest": checkpoints.LATEST}.get(which)
        if sub is None:
            raise ValueError(f"config.which={which!r} is not 'best' or 'latest'.")
        run, step_dir = path, checkpoints.latest_step_dir(path / sub)
    config_file = run / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"config.checkpoints: {run} has no config.json (not a run dir).")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    tree = checkpoints.restore_state_tree(step_dir)
    return (
        config,
        {"params": tree["params"], "batch_stats": tree["batch_stats"]},
        int(step_dir.name),
    )


def combine_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the configured combinations of the runs in config.checkpoints."""
    start = time.time()
    unknown = set(config.combinations.split(",")) - set(COMBINATIONS)
    if unknown:
        raise ValueError(f"config.combinations: unknown {sorted(unknown)}; known {COMBINATIONS}.")
    run_dirs = [r for r in config.checkpoints.split(",") if r]
    if not run_dirs:
        raise ValueError("config.checkpoints is empty: give comma-separated run directories.")
    loaded = [load_run(r, config.which) for r in run_dirs]
    base = loaded[0][0]
    for run, (c, _, _) in zip(run_dirs, loaded, strict=True):
        for key in ("data.name", "data.test_domains", "trial_seed", "model.name"):
            a, b = base[key.split(".")[0]], c[key.split(".")[0]]
            if "." in key:
                a, b = a[key.split(".")[1]], b[key.split(".")[1]]
            if a != b:
                raise ValueError(
                    f"config.checkpoints: {run} has {key}={b!r}, but {run_dirs[0]} has {a!r}."
                )
    variables = [v for _, v, _ in loaded]
    ws.check_compatible(variables, run_dirs)
    workdir = train.prepare_workdir(workdir, config)

    data = pipeline.load_domains(
        base.data.name,
        base.data.test_domains,
        base.trial_seed,
        base.data.holdout_fraction,
        data_dir=config.data_dir or base.data.data_dir,
    )
    mesh = parallel.make_mesh()
    model = registry.build_classifier(base.model, data.num_classes)
    logits = train.model_logits(model)
    single = jax.jit(train.make_eval_step(logits, base.data.normalize))
    batch_size = base.data.eval_batch_size

    def evaluate(step_fn, v, splits=None):
        d = (
            data
            if splits is None
            else pipeline.DomainData(
                data.name, data.domains, data.test_domains, data.num_classes, splits
            )
        )
        return train.evaluate(step_fn, v, d, batch_size, mesh)

    held_out = tuple(s for s in data.splits if s.split == "out" and not s.is_test_domain)

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

    combos = config.combinations.split(",")
    scores = None
    if "individual" in combos or "greedy_soup" in combos:
        scores = []
        for run, v in zip(run_dirs, variables, strict=True):
            # Greedy soup alone needs only the held-out splits: skip the rest (K evaluations).
            evals = evaluate(single, v, None if "individual" in combos else held_out)
            scores.append(float(np.mean([m["accuracy"] for s, m in evals if s in held_out])))
            if "individual" in combos:
                add("individual", evals, member=str(run))
    if "uniform_soup" in combos:
        add("uniform_soup", evaluate(single, ws.uniform_soup(variables)))
    if "greedy_soup" in combos:
        soup, kept = ws.greedy_soup(variables, scores, score, strict=config.greedy_strict)
        add("greedy_soup", evaluate(single, soup), members=[run_dirs[i] for i in kept])
    per_pass = config.models_per_pass or (1 if jax.default_backend() == "cpu" else None)
    for combine in ("sum_logits", "mean_probs"):
        if f"ensemble_{combine}" in combos:
            step_fn = jax.jit(
                train.make_eval_step(
                    lambda v, x, c=combine: ws.ensemble_logits(logits, v, x, c, per_pass),
                    base.data.normalize,
                )
            )
            add(f"ensemble_{combine}", evaluate(step_fn, ws.stack(variables)))
    if "interpolation" in combos and len(variables) >= 2:
        for alpha in config.interpolation_alphas:
            v = ws.interpolate(variables[0], variables[1], alpha)
            add("interpolation", evaluate(single, v), alpha=float(alpha))

    if jax.process_index() == 0:
        results.append_rows(workdir, rows)
    summary = {"runs": run_dirs, "which": config.which, "wall_time_s": time.time() - start}
    for name in dict.fromkeys(r["method"] for r in rows):
        key_rows = [r for r in rows if r["method"] == name]
        groups = {}
        for r in key_rows:
            groups.setdefault(r.get("member", r.get("alpha", "")), []).append(r)
        summary[name] = {
            str(k): {
                "id_accuracy": float(
                    np.mean(
                        [
                            r["accuracy"]
                            for r in g
                            if not r["is_test_domain"] and r["split"] == "out"
                        ]
                    )
                ),
                "ood_accuracy": float(
                    np.mean(
                        [r["accuracy"] for r in g if r["is_test_domain"] and r["split"] == "in"]
                    )
                ),
            }
            for k, g in groups.items()
        }
    if jax.process_index() == 0:
        results.write_json_atomic(workdir / results.SUMMARY, summary)
    logging.info("Combinations: %s", json.dumps(summary, indent=1))
    return summary
