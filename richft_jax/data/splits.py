"""DomainBed's in/out splits of each domain, reproduced exactly so results stay comparable."""

from __future__ import annotations

import hashlib

import numpy as np


def seed_hash(*args: object) -> int:
    """Derives an integer seed from arbitrary arguments exactly like DomainBed's misc.seed_hash."""
    args_str = str(args)
    return int(hashlib.md5(args_str.encode("utf-8")).hexdigest(), 16) % (2**31)


def in_out_split(
    n: int, trial_seed: int, domain_index: int, holdout_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Returns DomainBed's (in_indices, out_indices) of a domain of n examples, as int64.

    DomainBed shuffles range(n) with RandomState(seed_hash(trial_seed, domain_index)) and holds
    out the first int(n * holdout_fraction) keys (its split_dataset returns them first, as out).
    """
    keys = list(range(n))
    np.random.RandomState(seed_hash(trial_seed, domain_index)).shuffle(keys)  # noqa: NPY002
    n_out = int(n * holdout_fraction)
    return np.asarray(keys[n_out:], np.int64), np.asarray(keys[:n_out], np.int64)
