"""The run outputs other tools read: results.jsonl rows and summary.json.

Rows are appended one whole line per write and fsynced, so a crash leaves at most a
truncated last line, which readers skip with a warning. ID and OOD of a row are defined once
here (`is_id`, `is_ood`, `id_ood`), as `DomainData.id_splits` / `ood_splits` define them for
splits: ID = the training domains' out splits, OOD = the test domains' in splits (DomainBed).
"""

import json
import os
import pathlib
from collections.abc import Iterable

import numpy as np
from absl import logging

RESULTS = "results.jsonl"
SUMMARY = "summary.json"


def is_id(row: dict) -> bool:
    """Whether a per-split row is in-distribution: a training domain's held-out (out) split."""
    return not row["is_test_domain"] and row["split"] == "out"


def is_ood(row: dict) -> bool:
    """Whether a per-split row is out-of-distribution: a test domain's in split (DomainBed's
    test accuracy; the test domains' out splits serve only oracle selection)."""
    return bool(row["is_test_domain"]) and row["split"] == "in"


def id_ood(rows: Iterable[dict], key: str = "accuracy") -> dict[str, float]:
    """{"id": mean of `key` over the ID rows, "ood": over the OOD rows}; NaN where none."""
    rows = list(rows)
    ident, ood = [r[key] for r in rows if is_id(r)], [r[key] for r in rows if is_ood(r)]
    return {
        "id": float(np.mean(ident)) if ident else float("nan"),
        "ood": float(np.mean(ood)) if ood else float("nan"),
    }


def eval_rows(evals: Iterable[tuple], **fields) -> list[dict]:
    """results.jsonl rows from `evaluation.evaluate`'s (split, metrics) pairs, each row carrying
    `fields` (step, method, run metadata...)."""
    return [
        {
            **fields,
            "domain": s.domain,
            "split": s.split,
            "is_test_domain": s.is_test_domain,
            "accuracy": m["accuracy"],
            "loss": m["loss"],
            "num_examples": m["count"],
        }
        for s, m in evals
    ]


def append_rows(workdir: str, rows: Iterable[dict]) -> None:
    """Appends rows to workdir/results.jsonl (one write per batch of rows, then fsync).

    After a line cut short by a crash, the rows start on a new line: the truncated line stays
    one bad line (skipped by readers) instead of swallowing the first new row.
    """
    path = pathlib.Path(workdir) / RESULTS
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    try:
        with open(path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(f"Could not append results to {path}: {e}") from e


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Reads a results.jsonl, skipping (with a warning) lines that are not whole JSON objects."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logging.warning(
                "%s:%d is not a whole JSON line (truncated write?): skipped.", path, number
            )
    return rows


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def truncate_after(workdir: str, step: int) -> int:
    """Drops rows with step > `step` (written after the checkpoint we resume from)."""
    path = pathlib.Path(workdir) / RESULTS
    rows = read_rows(path)
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) != len(rows):
        tmp = path.with_name(RESULTS + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), "utf-8")
        os.replace(tmp, path)
    return len(rows) - len(kept)


def select_training_domain_validation(rows: list[dict], method: str | None = None) -> dict:
    """DomainBed model selection within a run: the evaluated step whose mean out-split
    accuracy over training domains is highest (earliest on ties), with its ID/OOD numbers.
    `method` restricts the rows to one method (a run may also log its weight average)."""
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        if method is not None and r["method"] != method:
            continue
        by_step.setdefault(r["step"], []).append(r)
    if not by_step:
        raise ValueError("No evaluation rows to select from.")

    def summarize(step: int) -> dict:
        rs = by_step[step]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        accuracies = lambda keep: [r["accuracy"] for r in rs if keep(r)]  # noqa: E731
        return {
            "step": step,
            "id_accuracy": mean(accuracies(is_id)),
            # The other two splits: the training domains' in splits (what the model trains
            # on) and the test domains' out splits (oracle selection only).
            "id_train_accuracy": mean(
                accuracies(lambda r: not r["is_test_domain"] and r["split"] == "in")
            ),
            "ood_accuracy": mean(accuracies(is_ood)),
            "ood_out_accuracy": mean(
                accuracies(lambda r: r["is_test_domain"] and r["split"] == "out")
            ),
        }

    summaries = [summarize(s) for s in sorted(by_step)]
    best = max(summaries, key=lambda s: (s["id_accuracy"], -s["step"]))
    return {"selected": best, "last": summaries[-1], "curve": summaries}
