"""Spec search space → an Optuna define-by-run function (conditional parameters for nested choices)."""

from __future__ import annotations

import math
from typing import Any

import optuna

from .spec import (Choice, Distribution, IntRange, LogUniform, SweepSpec, Uniform, nested_distributions,
                   parse_distribution)


class DefineByRun:
    """Called by Optuna (through Ray Tune's ``OptunaSearch``) once per trial. Parameters are named by their dotted
    path; a parameter nested in a chosen mapping is named ``<path>.<sub-path>`` and is only sampled when that option
    is chosen. Returns ``None``: the trial's config is exactly the sampled flat parameters. A class, not a closure,
    so the searcher can be pickled into Tune's experiment checkpoint."""

    def __init__(self, space: dict[str, Distribution]):
        self.space = space

    def __call__(self, trial: optuna.Trial) -> None:
        for path, dist in self.space.items():
            self._suggest(trial, path, dist)
        return None

    def _suggest(self, trial: optuna.Trial, name: str, dist: Distribution) -> Any:
        if isinstance(dist, LogUniform):
            return trial.suggest_float(name, dist.low, dist.high, log=True)
        if isinstance(dist, Uniform):
            return trial.suggest_float(name, dist.low, dist.high)
        if isinstance(dist, IntRange):
            return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        labels = dist.labels()
        label = trial.suggest_categorical(name, labels)
        option = dist.options[labels.index(label)]
        for sub, value in nested_distributions(option):
            self._suggest(trial, f"{name}.{sub}", parse_distribution(value, f"search.space.{name}.{sub}"))
        return label


def grid_values(space: dict[str, Distribution]) -> dict[str, list[Any]]:
    """The grid sampler's search space: every path's choice labels (the spec guarantees plain choices)."""
    return {path: dist.labels() for path, dist in space.items() if isinstance(dist, Choice)}


def grid_size(spec: SweepSpec) -> int:
    """How many configurations the grid sampler's space holds."""
    return math.prod(len(v) for v in grid_values(spec.space).values())


def planned_trials(spec: SweepSpec) -> int:
    """The trials the sweep will run: ``search.trials``, at most the grid's size for the grid sampler."""
    trials = spec.search.trials
    return min(trials, grid_size(spec)) if spec.search.sampler == "grid" else trials
