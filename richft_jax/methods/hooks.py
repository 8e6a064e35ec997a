"""The methods a config switches on, composed into the one hook object the train loop uses.

`build(config, model, image_shape)` asks every method module listed in `_methods` for its
`Method` (None when off) and returns `Hooks`. The loop only calls Hooks' functions, so adding a
method is its module, its config keys and its line in `_methods` (and its keys' checks in
config_checks.validate_methods, which run before JAX is imported); the loop is never edited.
The order of `_methods` is the order hooks compose in (e.g. the projection of self-labeling
runs before the moving average sees the parameters).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from richft_jax.data import pipeline
from richft_jax.methods import feature_dropout, label_noise, lpft, moving_average, self_labeling
from richft_jax.methods.method import Method


def _methods(config: ml_collections.ConfigDict, model, image_shape) -> list[Method]:
    """Every method of the config, in composition order."""
    found = [
        label_noise.method(config),
        lpft.method(config),
        self_labeling.method(config, model, image_shape) if model is not None else None,
        moving_average.method(config),
    ]
    return [m for m in found if m is not None]


@dataclasses.dataclass(frozen=True)
class Hooks:
    """The composition of a run's methods: what the loop calls, and nothing else."""

    name: str  # The run's method name: its result rows' `method`.
    methods: tuple[Method, ...]
    rates: Callable[[int], dict[str, float]]  # Step -> every dropout-like rate of that step.

    def _each(self, field: str) -> list[tuple[Method, Callable]]:
        return [(m, getattr(m, field)) for m in self.methods if getattr(m, field) is not None]

    def transform_data(self, data: pipeline.DomainData) -> pipeline.DomainData:
        for _, f in self._each("transform_data"):
            data = f(data)
        return data

    def prepare_params(self, ctx, params: Any, batch_stats: Any) -> Any:
        for _, f in self._each("prepare_params"):
            params = f(ctx, params, batch_stats)
        return params

    def init_extras(self, params: Any) -> dict:
        return {m.name: f(params) for m, f in self._each("init_extras")}

    def post_update(self, params: Any, extras: dict, steps_done: jax.Array) -> tuple[Any, dict]:
        extras = dict(extras)
        for m, f in self._each("post_update"):
            params, extras[m.name] = f(params, extras.get(m.name), steps_done)
        return params, extras

    @property
    def label_transform(self) -> Callable | None:
        transforms = self._each("label_transform")
        if len(transforms) > 1:
            names = [m.name for m, _ in transforms]
            raise ValueError(f"Methods {names} each transform the labels; combine at most one.")
        return transforms[0][1] if transforms else None

    def eval_weights(self, params: Any, extras: dict, step: int) -> dict[str, Any]:
        """The model's weights and every method's extra weights, by result-row method name."""
        weights = {self.name: params}
        for m, f in self._each("eval_weights"):
            for suffix, w in f(extras[m.name], step).items():
                weights[f"{self.name}+{suffix}"] = w
        return weights

    def initial_weights(self, params: Any) -> dict[str, Any]:
        out = {}
        for _, f in self._each("initial_weights"):
            out.update(f(params))
        return out

    def summary(self, rows: list[dict]) -> dict:
        out = {}
        for _, f in self._each("summary"):
            out.update(f(rows, self.name))
        return out


def dropout_rates(config: ml_collections.ConfigDict) -> Callable[[int], dict[str, float]]:
    """Feature dropout and the backbone's own dropout / drop path, on `config.dropout_schedule`."""
    return feature_dropout.step_rates(
        config.dropout_schedule,
        int(config.dropout_cutoff * config.num_steps),
        {
            "feature": config.dropout_rate,
            "block_dropout_rate": config.block_dropout_rate,
            "drop_path_rate": config.drop_path_rate,
        },
    )


def build(
    config: ml_collections.ConfigDict, model=None, image_shape: tuple[int, ...] | None = None
) -> Hooks:
    """The run's hooks. Without a model (e.g. only to load data) the model-dependent methods
    are left out; the loop always passes one."""
    return Hooks(
        name=config.method,
        methods=tuple(_methods(config, model, image_shape)),
        rates=dropout_rates(config),
    )
