"""Writes our run records in DomainBed's record format, for DomainBed's own collect_results.

  python launch/to_domainbed.py DIR... --out=OUT
  python -m domainbed.scripts.collect_results --input_dir=OUT   # in a DomainBed clone

Reads the runs under DIR... as `richft_jax.report` reads them (`selection.run_records`: one run
per (results.jsonl, method), in the report's reading order) and writes, per run, OUT/NNNN_.../
with DomainBed's files:
- results.jsonl: one line per evaluated step (ascending, so DomainBed's argmax keeps the
  earliest of tied steps, as we do): {"args": {"dataset", "algorithm" (the report's method
  name), "test_envs" (indices), "hparams_seed", "trial_seed", "seed", "output_dir" (our run)},
  "hparams" (our config.json, {} without one), "step", "env{i}_in_acc", "env{i}_out_acc" for
  every domain i (-1 for a training domain's in split the run did not evaluate, as trainv2.py
  records it)}; every line ends with a newline (load_records cuts the last character);
- done: the empty marker DomainBed's train.py leaves (load_records does not need it; its sweep
  tool treats a run without it as unfinished).
Domain i is the dataset's i-th domain in the order our rows list them (the report's column
order), written to OUT/environments.json ({dataset: [domains]}): DomainBed needs the dataset
registered in domainbed/datasets.py with ENVIRONMENTS in that order (and in its DATASETS).
hparams_seed: within each (dataset, method, test domains, trial seed), the runs numbered
0, 1, ... in reading order. DomainBed sorts a group's runs by hparams_seed, then stably by
validation score, and reverses: the last of tied runs wins, the one the report picks.
Every step must have an in and an out row for every domain, and the rows' is_test_domain must
agree with test_domains; otherwise the run is refused (DomainBed could not read it the same).
"""

import argparse
import collections
import json
import re
import sys

from etils import epath

from richft_jax import paths, results, selection


def environments(records: list[selection.RunRecord]) -> dict[str, list[str]]:
    """{dataset: its domains}, in the order the records' rows first list them (the report's
    column order): DomainBed's env indices."""
    order: dict[str, dict[str, None]] = collections.defaultdict(dict)
    for r in records:
        for d in r.domains:
            order[r.dataset].setdefault(d, None)
    return {dataset: list(domains) for dataset, domains in order.items()}


def hparams_seeds(records: list[selection.RunRecord]) -> list[int]:
    """Each record's hparams_seed: its rank in reading order among the records of its
    (dataset, method, test domains, trial seed)."""
    seen: collections.Counter = collections.Counter()
    seeds = []
    for r in records:
        key = (r.dataset, r.method, r.test_domains, r.trial_seed)
        seeds.append(seen[key])
        seen[key] += 1
    return seeds


def step_records(rows: list[dict], envs: list[str], args: dict, hparams: dict) -> list[dict]:
    """DomainBed's per-step records of one run's rows (one method), ascending steps."""
    test = set(rows[0]["test_domains"])
    by_step: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for r in rows:
        if bool(r["is_test_domain"]) != (r["domain"] in test):
            raise ValueError(f"{args['output_dir']}: is_test_domain disagrees with test_domains.")
        key = f"env{envs.index(r['domain'])}_{r['split']}_acc"
        if key in by_step[r["step"]]:
            raise ValueError(f"{args['output_dir']}: two {key} rows at step {r['step']}.")
        by_step[r["step"]][key] = r["accuracy"]
    wanted = {f"env{i}_{split}_acc" for i in range(len(envs)) for split in ("in", "out")}
    # A training domain's in split left out of evaluation (config.data.eval_train_in_max_
    # examples=0, the paper configs): -1, as trainv2.py records it; DomainBed never reads it.
    not_evaluated = {f"env{envs.index(d)}_in_acc" for d in envs if d not in test}
    out = []
    for step in sorted(by_step):
        if not_evaluated.isdisjoint(by_step[step]):  # All of them skipped, not some.
            by_step[step].update(dict.fromkeys(not_evaluated, -1.0))
        if set(by_step[step]) != wanted:
            missing = sorted(wanted - set(by_step[step]))
            raise ValueError(f"{args['output_dir']}: step {step} lacks {missing} ({envs}).")
        out.append({"args": args, "hparams": hparams, "step": step, **by_step[step]})
    return out


def convert(dirs: list[str], out: str) -> list[epath.Path]:
    """Writes the runs under `dirs` (local or gs://) into `out` (local or gs://; empty or
    absent) as DomainBed's records; returns the run directories written, in reading order."""
    out_dir = paths.path(out, "--out")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: DomainBed would read every run in it.")
    records = selection.run_records(dirs)
    if not records:
        raise FileNotFoundError(f"No {results.RESULTS} under {dirs}.")
    envs = environments(records)
    runs = []  # (directory name, results.jsonl text): all checked before anything is written.
    for i, (record, hparams_seed) in enumerate(zip(records, hparams_seeds(records), strict=True)):
        # The rows' method name: the report names a method whose runs hold several dropout
        # rates once per rate ("m (p=0.5)"); DomainBed gets the report's name.
        row_method = record.base_method or record.method
        rows = [r for r in results.read_rows(record.path) if r["method"] == row_method]
        config = epath.Path(record.path) / "config.json"
        hparams = json.loads(config.read_text("utf-8")) if config.exists() else {}
        domains = envs[record.dataset]
        args = {
            "algorithm": record.method,
            "dataset": record.dataset,
            "hparams_seed": hparams_seed,
            "output_dir": record.path,
            "seed": rows[0].get("seed", record.trial_seed),
            "test_envs": [domains.index(d) for d in rows[0]["test_domains"]],
            "trial_seed": record.trial_seed,
        }
        lines = step_records(rows, domains, args, hparams)
        name = re.sub(r"[^A-Za-z0-9_.+=-]", "_", f"{i:04d}_{record.method}_{record.test_domains}")
        text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        runs.append((f"{name}_trial{record.trial_seed}_hp{hparams_seed}", text))
    paths.make_dirs(out_dir, "--out")
    (out_dir / "environments.json").write_text(json.dumps(envs, indent=1) + "\n", "utf-8")
    written = []
    for name, text in runs:
        run_dir = paths.make_dirs(out_dir / name, "--out")
        (run_dir / "results.jsonl").write_text(text, "utf-8")
        (run_dir / "done").write_text("done", "utf-8")
        written.append(run_dir)
    return written


def main(argv: list[str] | None = None) -> None:
    """The command line: DIR... --out=OUT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="Run directories (or their parents).")
    parser.add_argument("--out", required=True, help="Empty directory for DomainBed's records.")
    args = parser.parse_args(argv)
    try:
        written = convert(args.dirs, args.out)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    envs = json.loads((paths.path(args.out) / "environments.json").read_text("utf-8"))
    print(f"Wrote {len(written)} DomainBed runs into {args.out}; environments: {envs}.")


if __name__ == "__main__":
    main(sys.argv[1:])
