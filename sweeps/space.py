"""Spec search space → an Optuna define-by-run function (conditional parameters for nested choices)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import optuna

from bvae_core.config import ConfigError, TrainConfig, parse_config

from .member_scheduler import evaluations
from .spec import (Choice, Distribution, IntRange, LogUniform, SweepSpec, Uniform, apply_params, corners,
                   nested_distributions, parse_distribution)


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


def touches(path: str, field: str) -> bool:
    """Whether the search path ``path`` sets the dotted ``field`` of the train config, or a part of it."""
    return path == field or field.startswith(path + ".") or path.startswith(field + ".")


def corner_configs(spec: SweepSpec, fields: tuple[str, ...]) -> Iterator[TrainConfig]:
    """The train configs at every combination of the ends of the search paths that can set one of ``fields`` or a
    part of one (dotted paths into the train config, e.g. ``model.latent_dim``): where the smallest and largest values
    a trial can take for them lie. ``base``'s config when the space sets none of them (or no combination is valid)."""
    space = spec.raw["search"]["space"]
    paths = [p for p in space if any(touches(p, f) for f in fields)]
    found = False
    for corner in itertools.product(*(corners(space[p]) for p in paths)) if paths else ():
        try:
            config = parse_config(apply_params(spec.base, dict(zip(paths, corner))))  # as a trial's config is made
        except ConfigError:
            continue  # e.g. eval_every > steps at this corner: no trial takes both
        found = True
        yield config
    if not found:
        yield spec.base_config


def most_evaluations(spec: SweepSpec) -> int:
    """The most evaluations a trial of the sweep makes (``ceil(train.steps / train.eval_every)``) over every
    value the search space gives those fields: an early-stopping scheduler's ``max_t``, so that a trial searched to
    more steps than ``base`` is not stopped at ``base``'s last evaluation."""
    return max(evaluations(c.train.steps, c.train.eval_every)
               for c in corner_configs(spec, ("train.steps", "train.eval_every")))  # fmt: skip
