"""Rate schedules of the training-time regularisers (Liu et al. 2023, "Dropout reduces
underfitting"): the penultimate feature dropout (Zhang & Bottou, arXiv 2403.00946) and a
backbone's own rates (block dropout, drop path).

The layers themselves are in richft_jax/models/layers.py. Every rate is passed to the jitted
step as an argument, so a schedule changes it every step without recompiling.
"""

from collections.abc import Callable

from richft_jax import config_checks

# The layer, for callers outside the models package that apply it to features themselves
# (richft_jax/analysis/linear_finetune.py); models import it from models.layers.
from richft_jax.models.layers import feature_dropout

__all__ = ["feature_dropout", "rate_schedule", "step_rates"]


def rate_schedule(kind: str, rate: float, cutoff: int) -> Callable[[int], float]:
    """Dropout rate per step (Liu et al. 2023, "Dropout reduces underfitting").

    constant: `rate` throughout; early: `rate` before step `cutoff`, then 0; early_linear: from
    `rate` down linearly to 0 at `cutoff`, then 0; late: 0 before `cutoff`, then `rate`. The rate
    is passed to the jitted step as an argument, so changing it never recompiles.
    """
    if kind == "constant":
        return lambda step: rate
    if kind == "early":
        return lambda step: rate if step < cutoff else 0.0
    if kind == "early_linear":
        return lambda step: rate * max(0.0, 1.0 - step / cutoff) if cutoff > 0 else 0.0
    if kind == "late":
        return lambda step: 0.0 if step < cutoff else rate
    raise config_checks.not_one_of("dropout_schedule", kind, config_checks.DROPOUT_SCHEDULES)


def step_rates(
    kind: str, cutoff: int, rates: dict[str, float]
) -> Callable[[int], dict[str, float]]:
    """Every configured rate of a step under one schedule: `{"feature": p, name: p', ...}`.

    "feature" (the penultimate dropout) is always present; other entries (e.g. the ViT's
    `block_dropout_rate`, `drop_path_rate`) only when their configured rate is non-zero, so a
    backbone without them never receives them and the dict's structure (hence the compiled
    step) is the same at every step.
    """
    schedules = {
        name: rate_schedule(kind, rate, cutoff)
        for name, rate in rates.items()
        if name == "feature" or rate > 0
    }
    return lambda step: {name: float(s(step)) for name, s in schedules.items()}
