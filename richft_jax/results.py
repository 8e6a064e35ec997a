"""The run outputs other tools read: results rows and summary.json.

On a local disk rows go to workdir/results.jsonl, appended one whole line per write and
fsynced, so a crash leaves at most a truncated last line, which readers skip with a warning.
An object store (gs://) has no appends: rewriting a growing object at every evaluation would
cost its whole size each time, so each append call (one evaluation round) is one object under
workdir/results.jsonl.d/, named to sort in write order; `read_rows` merges results.jsonl and
those objects, so every reader sees the same rows either way.

ID and OOD of a row are defined once here (`is_id`, `is_ood`, `id_ood`), as
`DomainData.id_splits` / `ood_splits` define them for splits: ID = the training domains' out
splits, OOD = the test domains' in splits (DomainBed).
"""

import json
import os
import re
import uuid
from collections.abc import Iterable

import numpy as np
from absl import logging
from etils import epath

from richft_jax import paths

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
# The object-store layout: one object per append call, "<8-digit sequence>-<random>.jsonl".
ROUNDS = RESULTS + ".d"
_ROUND_NAME = re.compile(r"^(\d{8})-[0-9a-f]+\.jsonl$")


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


def _lines(rows: Iterable[dict]) -> str:
    """Rows as JSON lines (sorted keys, one row a line)."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def append_rows(
    workdir: str | os.PathLike, rows: Iterable[dict], *, sharded: bool | None = None
) -> None:
    """Appends rows to the workdir's results: a line each in results.jsonl on a local disk,
    one object per call under results.jsonl.d/ on an object store (`sharded` forces either)."""
    directory = paths.path(workdir, "workdir")
    sharded = paths.is_remote(directory) if sharded is None else sharded
    if sharded:
        _append_round(directory, _lines(rows))
    else:
        _append_local(directory / RESULTS, _lines(rows))


def _append_local(path: epath.Path, text: str) -> None:
    """One write of `text` at the end of a local results.jsonl, then fsync.

    After a line cut short by a crash, the rows start on a new line: the truncated line stays
    one bad line (skipped by readers) instead of swallowing the first new row.
    """
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


def round_files(workdir: str | os.PathLike) -> list[epath.Path]:
    """The workdir's round objects (results.jsonl.d/*), in write order; [] when none."""
    folder = paths.path(workdir, "workdir") / ROUNDS
    try:
        found = [p for p in folder.iterdir() if _ROUND_NAME.match(p.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=lambda p: p.name)


def _append_round(directory: epath.Path, text: str) -> None:
    """Writes `text` as the next round object: its sequence number follows the last one's."""
    existing = round_files(directory)
    sequence = int(_ROUND_NAME.match(existing[-1].name)[1]) + 1 if existing else 0
    target = directory / ROUNDS / f"{sequence:08d}-{uuid.uuid4().hex[:8]}.jsonl"
    try:
        if not paths.is_remote(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        paths.write_text_atomic(target, text)
    except OSError as e:
        raise OSError(f"Could not write results to {target}: {e}") from e


def has_results(directory: str | os.PathLike) -> bool:
    """Whether a run directory holds results (results.jsonl or round objects)."""
    directory = paths.path(directory, "run directory")
    return (directory / RESULTS).exists() or bool(round_files(directory))


# Rows of round objects already read from an object store, by URL: an object is written once
# and only ever rewritten by `truncate_after` (which drops its entry), so a run re-reading its
# rows at every evaluation fetches each object once. Local files are always read afresh.
_ROUND_CACHE: dict[str, list[dict]] = {}


def read_rows(path: str | os.PathLike) -> list[dict]:
    """A run's rows: results.jsonl then its round objects, given the run directory or its
    results.jsonl (another .jsonl file is read alone). Lines that are not whole JSON objects
    are skipped with a warning."""
    path = paths.path(path, "results")
    if path.name == RESULTS:
        directory = path.parent
    elif path.is_dir():
        directory = path
    else:
        return _read_file(path)
    rows = _read_file(directory / RESULTS)
    for f in round_files(directory):
        rows += _read_round(f)
    return rows


def _read_round(path: epath.Path) -> list[dict]:
    """A round object's rows; each remote object fetched once per process."""
    if not paths.is_remote(path):
        return _read_file(path)
    key = str(path)
    if key not in _ROUND_CACHE:
        _ROUND_CACHE[key] = _read_file(path)
    return [dict(r) for r in _ROUND_CACHE[key]]


def _read_file(path: epath.Path) -> list[dict]:
    """The rows of one JSON-lines file ([] if it does not exist), bad lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
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
    """Writes JSON so readers never see half a file (`paths.write_text_atomic`)."""
    paths.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def truncate_after(workdir: str | os.PathLike, step: int) -> int:
    """Drops rows with step > `step` (written after the checkpoint we resume from); returns
    how many. A round object left without rows is deleted, one with some is rewritten."""
    directory = paths.path(workdir, "workdir")
    dropped = _truncate_file(directory / RESULTS, step, delete_if_empty=False)
    for f in round_files(directory):
        dropped += _truncate_file(f, step, delete_if_empty=True)
    return dropped


def _truncate_file(path: epath.Path, step: int, delete_if_empty: bool) -> int:
    """Rewrites one file of rows without those past `step`; the number dropped."""
    rows = _read_file(path)
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) == len(rows):
        return 0
    _ROUND_CACHE.pop(str(path), None)
    if kept or not delete_if_empty:
        paths.write_text_atomic(path, _lines(kept))
    else:
        path.unlink()
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
