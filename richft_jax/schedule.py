"""Step labels: which number a run's records carry, and when it evaluates and checkpoints.

The loop counts updates done, u = 1 .. config.num_steps. `config.step_labels` says how a
record (results.jsonl row, checkpoints/<label>, best/<label>) is numbered:

- "updates" (default): label = u; evaluation when u % eval_every == 0 and after the last update.
- "domainbed": label = u - 1, as DomainBed's loop (the paper's trainv2.py) numbers the record it
  writes after its update of index `step`; so it evaluates after the first update (label 0),
  whenever label % eval_every == 0, and after the last update. `--steps 10001` with
  checkpoint_freq 300 gives labels 0, 300, ..., 9900, 10000.

Checkpoint directories carry the label (the number results.jsonl rows carry, so best/ and the
along-run tools find a row's weights); the state inside keeps the updates done, which resuming
uses. Everything here is plain Python: the loop and the tests ask the same functions.
"""

from collections.abc import Iterable

import ml_collections

STEP_LABELS = ("updates", "domainbed")


def _offset(config: ml_collections.ConfigDict) -> int:
    kind = config.get("step_labels", "updates")
    if kind not in STEP_LABELS:
        raise ValueError(f"config.step_labels={kind!r} is not one of {STEP_LABELS}.")
    return 1 if kind == "domainbed" else 0


def validate(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the key, on an unknown config.step_labels."""
    _offset(config)


def label(config: ml_collections.ConfigDict, updates_done: int) -> int:
    """The label of the record written after `updates_done` updates (-1 before any update in
    "domainbed": e.g. LP-FT's linear probe)."""
    return updates_done - _offset(config)


def updates(config: ml_collections.ConfigDict, step_label: int) -> int:
    """The updates done when the record labelled `step_label` is written (label's inverse)."""
    return step_label + _offset(config)


def _on_grid(config: ml_collections.ConfigDict, updates_done: int, every: int) -> bool:
    return 1 <= updates_done <= config.num_steps and (
        label(config, updates_done) % every == 0 or updates_done == config.num_steps
    )


def is_eval_step(config: ml_collections.ConfigDict, updates_done: int) -> bool:
    """Whether the loop evaluates after `updates_done` updates (label on the eval grid, or
    the last update)."""
    return _on_grid(config, updates_done, config.eval_every)


def is_checkpoint_step(config: ml_collections.ConfigDict, updates_done: int) -> bool:
    """Whether the loop saves a checkpoint after `updates_done` updates (as evaluation, on the
    checkpoint grid)."""
    return _on_grid(config, updates_done, config.checkpoint_every)


def eval_labels(config: ml_collections.ConfigDict) -> list[int]:
    """Every label a whole run evaluates at, in order (a dry run of the loop's schedule)."""
    return [label(config, u) for u in range(1, config.num_steps + 1) if is_eval_step(config, u)]


def along_run_steps(config: ml_collections.ConfigDict, saved: Iterable[int]) -> list[int]:
    """The saved checkpoint labels that enter the along-run ensembles and soups: those from
    config.along_run_start on (a paper config's key; all of them without it), in order."""
    start = config.get("along_run_start")
    return sorted(s for s in saved if start is None or s >= start)
