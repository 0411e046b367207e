"""The sweep spec: a train config (``base``) plus ``search``, ``resources``, ``tracking``, ``storage`` and ``ray``
(docs/contracts.md). Parsed and validated once, before anything starts; every error names its field (``SpecError``)."""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from bvae_core.config import (
    ConfigError,
    Float,
    NotBool,
    Seed,
    TrainConfig,
    _describe,
    _Strict,
    load_config_file,
    parse_config,
    set_dotted,
)


class SpecError(ConfigError):
    """A sweep spec is wrong; one line naming the field and what was expected."""


# ---------------------------------------------------------------- distributions
@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """A categorical choice; options may be plain values or mappings that nest further distributions."""

    options: tuple[Any, ...]

    def labels(self) -> list[str | int | float | bool | None]:
        """Optuna-friendly labels: plain values as they are; mappings by their ``kind``/``name`` when unique."""
        if all(o is None or isinstance(o, (str, int, float, bool)) for o in self.options):
            return list(self.options)
        keys = [o.get("kind", o.get("name")) if isinstance(o, dict) else None for o in self.options]
        if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
            return keys
        return [str(i) for i in range(len(self.options))]


Distribution = LogUniform | Uniform | IntRange | Choice
_DIST_KEYS = ("log_uniform", "uniform", "int", "int_log", "choice")


def is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _DIST_KEYS


def parse_distribution(value: Any, where: str) -> Distribution:
    """``{log_uniform: [lo, hi]}``, ``{uniform: [lo, hi]}``, ``{int: [lo, hi]}``, ``{int_log: [lo, hi]}`` or
    ``{choice: [...]}`` (whose mappings may nest distributions) → a typed distribution."""
    if not is_distribution(value):
        head, _, last = where.rpartition(".")
        hint = (f" (on the command line the whole entry is one value: --set '{head}={{{last}: {value!r}}}')"
                if last in _DIST_KEYS and head.startswith("search.space.") else "")  # fmt: skip
        raise SpecError(f"{where}: expected one of {{{', '.join(k + ': …' for k in _DIST_KEYS)}}}, got {value!r}{hint}")
    kind, arg = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SpecError(f"{where}.choice: expected a non-empty list of options, got {arg!r}")
        for i, option in enumerate(arg):
            for path, sub in nested_distributions(option):
                parse_distribution(sub, f"{where}.choice[{i}].{path}")
        return Choice(tuple(arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in arg)):  # fmt: skip
        raise SpecError(f"{where}.{kind}: expected [low, high] numbers, got {arg!r}")
    low, high = arg
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SpecError(f"{where}.{kind}: expected low < high, got [{low}, {high}]")
    if kind == "log_uniform":
        if low <= 0:
            raise SpecError(f"{where}.log_uniform: expected 0 < low, got {low}")
        return LogUniform(float(low), float(high))
    if kind == "uniform":
        return Uniform(float(low), float(high))
    if not (float(low).is_integer() and float(high).is_integer()):
        raise SpecError(f"{where}.{kind}: expected integer bounds, got [{low}, {high}]")
    if kind == "int_log" and low <= 0:
        raise SpecError(f"{where}.int_log: expected 0 < low, got {low}")
    return IntRange(int(low), int(high), log=kind == "int_log")


def nested_distributions(option: Any, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted path, distribution mapping) for every distribution nested inside a choice option."""
    if is_distribution(option):
        return [(prefix.rstrip("."), option)]
    if isinstance(option, dict):
        found = []
        for key, value in option.items():
            found += nested_distributions(value, f"{prefix}{key}.")
        return found
    return []


def corners(value: Any, inside: bool = False) -> list[Any]:
    """The values a search-space entry can take at its ends: a range's low and high, every option of a choice, and
    for a mapping every combination of its entries' ends (a choice option may nest several distributions).
    ``inside``: a real range's value between its ends instead (not a whole number where it can help it: a field of
    whole numbers refuses what ``uniform``/``log_uniform`` draw)."""
    if is_distribution(value):
        kind, arg = next(iter(value.items()))
        if kind == "choice":
            return [corner for option in arg for corner in corners(option, inside)]
        if inside and kind in ("uniform", "log_uniform"):
            return [_inside(arg[0], arg[1], log=kind == "log_uniform")]
        return [arg[0], arg[1]]
    if isinstance(value, dict):
        keys = list(value)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(corners(value[k], inside) for k in keys))]
    return [value]


def _inside(low: float, high: float, log: bool) -> float:
    """A value strictly between ``low`` and ``high`` (geometrically for a log range), not a whole number if one fits."""
    for share in (0.5, 0.4142, 0.2718):
        value = (math.exp(math.log(low) + share * (math.log(high) - math.log(low))) if log
                 else low + share * (high - low))  # fmt: skip
        if not float(value).is_integer():
            break
    return value


# ---------------------------------------------------------------- settings
def _cohort_size(value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"search.cohort: expected a positive whole number or auto, got {value!r}")


class SchedulerSettings(_Strict):
    """Early stopping with ASHA (Li et al. 2020) on one metric, at evaluation granularity."""

    kind: Literal["asha"] = "asha"
    metric: str = "nelbo"
    mode: Literal["min", "max"] = "min"
    grace_period: Annotated[int, NotBool, Field(gt=0)] = 1  # evaluations before a trial can be stopped
    reduction_factor: Annotated[float, NotBool, Field(gt=1)] = 2.0


def _each_once(value: Any) -> Any:
    """A list of names where a name given twice is a mistake (``objectives: [rate, rate]``)."""
    if isinstance(value, list):
        twice = next((v for i, v in enumerate(value) if v in value[:i]), None)
        if twice is not None:
            raise PydanticCustomError("given_twice", "expected each name once ({twice} is given twice)",
                                      {"twice": repr(twice)})  # fmt: skip
    return value


class SearchSettings(_Strict):
    objectives: Annotated[list[Literal["rate", "distortion", "nelbo"]], Field(min_length=1),
                          AfterValidator(_each_once)] = ["rate", "distortion"]  # fmt: skip
    sampler: Literal["tpe", "nsga2", "gp", "random", "grid"] = "tpe"
    trials: Annotated[int, NotBool, Field(gt=0)] = 16
    concurrency: Annotated[int, NotBool, Field(gt=0)] | None = None  # None: as many as the resources allow
    seed: Seed = 0  # the sampler's (numpy's generators take 0 … 2**32 - 1)
    space: dict[str, Any]
    scheduler: SchedulerSettings | None = None
    max_failures: Annotated[int, NotBool, Field(ge=0)] = 1  # retries of a trial whose worker died (from its checkpoint)
    # configurations trained as one fused model per Ray trial (sweeps.cohorts); auto: 1 on CPUs, as fit on GPUs
    # (sweeps.cohort_size)
    cohort: Annotated[int | str, BeforeValidator(_cohort_size)] = "auto"


class ResourceSettings(_Strict):
    cpu: Annotated[float, NotBool, Field(gt=0)] = 1.0
    gpu: Annotated[float, NotBool, Field(ge=0)] = 0.0


def _tracking_uri(value: Any) -> Any:
    """A tracking URI MLflow can open (``sweeps.store.check_scheme``), refused naming the field."""
    from .store import check_scheme

    if isinstance(value, str):
        try:
            check_scheme(value)
        except ValueError as exc:
            raise ValueError(f"tracking.uri: {exc}") from None
    return value


class TrackingSettings(_Strict):
    # None: sqlite:///mlflow.db in the working directory
    uri: Annotated[str | None, BeforeValidator(_tracking_uri)] = None
    experiment: str | None = None  # None: the sweep name


class StorageSettings(_Strict):
    path: str = "./ray_results"  # or s3://bucket/prefix


class RaySettings(_Strict):
    address: str | None = None  # None: embedded local Ray; "auto" or ray://… for a cluster
    num_cpus: Annotated[int, NotBool, Field(gt=0)] | None = None  # embedded Ray only: cores to use (default: all)


class FrontierSettings(_Strict):
    """The hypervolume's reference point, fixed per sweep. Defaults: a rate of 50 nats and the zero-rate
    distortion of the dataset (the best decoder that ignores z), computed once when the sweep starts."""

    reference_rate: Annotated[float, NotBool, Field(gt=0)] | None = None
    reference_distortion: Float | None = None


class EvalSettings(_Strict):
    """Disentanglement metrics computed at the end of every trial (datasets with ground-truth factors), as in
    disentanglement_lib; ``preset``: ``fast`` (fewer points) or ``full`` (the study's counts)."""

    metrics: list[Literal["mig", "dci", "sap", "factorvae_score", "betavae_score"]] = []
    preset: Literal["fast", "full"] = "fast"


class _SpecModel(_Strict):
    # ≤ 100: a folder name in storage, and its trials' MLflow run names (<name>-<trial>-<member>) must stay short
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    base: dict[str, Any]
    search: SearchSettings
    resources: ResourceSettings = ResourceSettings()
    tracking: TrackingSettings = TrackingSettings()
    storage: StorageSettings = StorageSettings()
    ray: RaySettings = RaySettings()
    frontier: FrontierSettings = FrontierSettings()
    eval: EvalSettings = EvalSettings()


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec. ``raw`` is the mapping it came from (logged as the parent run's ``spec.yaml``)."""

    name: str
    base: dict[str, Any]
    base_config: TrainConfig
    space: dict[str, Distribution]
    search: SearchSettings
    resources: ResourceSettings
    tracking: TrackingSettings
    storage: StorageSettings
    ray: RaySettings
    frontier: FrontierSettings
    eval: EvalSettings
    raw: dict[str, Any]

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Flat sampled parameters (Optuna's, e.g. ``objective.schedule: linear_capacity`` and
        ``objective.schedule.c_max: 12.5``) → ``{path: value}`` with each chosen mapping filled in."""
        return resolve_params(self.space, params)

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The train config of one trial: ``base`` with the sampled flat ``params`` applied."""
        return parse_config(apply_params(self.base, self.resolve(params), self.resources))

    def applied_params(self, params: dict[str, Any], config: TrainConfig | None = None) -> dict[str, Any]:
        """The sampled ``params`` less those the trial's objective does not use (a controlled-capacity trial has no
        β): what is shown and logged for the trial."""
        config = config or self.trial_config(params)
        ignored = set(config.objective.ignored_paths())
        return {k: v for k, v in params.items() if k not in ignored}


def _fill(option: Any, prefix: str, params: dict[str, Any]) -> Any:
    if is_distribution(option):
        if prefix not in params:
            raise KeyError(prefix)
        return params[prefix]
    if isinstance(option, dict):
        return {k: _fill(v, f"{prefix}.{k}", params) for k, v in option.items()}
    return option


def resolve_params(space: dict[str, Distribution], params: dict[str, Any]) -> dict[str, Any]:
    """See :meth:`SweepSpec.resolve`. Raises ``KeyError`` naming a parameter that is missing."""
    resolved = {}
    for path, dist in space.items():
        value = params[path]
        if isinstance(dist, Choice):
            labels = dist.labels()
            option = dist.options[labels.index(value)]
            value = _fill(option, path, params) if isinstance(option, dict) else option
        resolved[path] = value
    return resolved


def apply_params(base: dict[str, Any], params: dict[str, Any], resources: ResourceSettings | None = None) -> dict:
    """``base`` with each ``path: value`` set (shorter paths first, so a chosen mapping's nested values win)."""
    data = copy.deepcopy(base)
    for path in sorted(params, key=lambda p: p.count(".")):
        set_dotted(data, path, copy.deepcopy(params[path]))
    if resources is not None and resources.gpu == 0:
        train = data.setdefault("train", {})
        train.setdefault("threads", max(1, int(resources.cpu)))  # one-thread trials packed one per core
    return data


def parse_spec(data: Any, source: str = "<spec>") -> SweepSpec:
    """Validate a sweep spec mapping; raise :class:`SpecError` naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with name, base and search, got {type(data).__name__}")
    data = absolute_data_paths(data)
    try:
        model = _SpecModel.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")
        raise SpecError(_train_config_key(errors[0], data, source) or _describe(errors[0], _SpecModel)) from None
    try:
        base_config = parse_config(model.base)
    except ConfigError as e:
        raise SpecError(f"base.{e}") from None
    if not model.search.space:
        raise SpecError("search.space: expected at least one dotted path to search, e.g. objective.beta")
    space = {path: parse_distribution(value, f"search.space.{path}") for path, value in model.search.space.items()}
    _check_paths(model, space)
    _check_nested_names(space)
    if model.search.sampler == "grid":
        for path, dist in space.items():
            if not isinstance(dist, Choice) or any(nested_distributions(o) for o in dist.options):
                raise SpecError(f"search.space.{path}: the grid sampler needs a plain choice list of values")
    if model.search.scheduler is not None and model.search.scheduler.metric not in _SCHEDULER_METRICS:
        raise SpecError(f"search.scheduler.metric: expected one of {', '.join(_SCHEDULER_METRICS)}, "
                        f"got {model.search.scheduler.metric!r}")  # fmt: skip
    scheduler = model.search.scheduler
    if scheduler is not None and scheduler.mode == "max" and scheduler.metric in _LOWER_IS_BETTER:
        raise SpecError(f"search.scheduler.mode: max keeps the trials with the highest {scheduler.metric}, the worst "
                        f"fits, and stops the best; {scheduler.metric} is lower-is-better: use min")  # fmt: skip
    rendered = [m for m in model.eval.metrics if m not in _CODE_BASED_METRICS]
    for name in _dataset_names(base_config.dataset.name, model.search.space):  # the base's and those the space offers
        if name == "file" and rendered:  # mig, dci, sap draw the file's rows; these render
            raise SpecError(f"eval.metrics: {rendered[0]} is not available on a file dataset: it renders examples "
                            f"that share a chosen factor, which stored images cannot; mig, dci and sap use the file's "
                            f"factors, or use one of {', '.join(_FACTOR_DATASETS)}")  # fmt: skip
        if model.eval.metrics and name not in (*_FACTOR_DATASETS, "file"):
            raise SpecError(f"eval.metrics: not available on the dataset {name!r}: it has no ground-truth factors; "
                            f"disentanglement metrics need one of {', '.join(_FACTOR_DATASETS)} (or a file dataset "
                            f"with factors, for mig, dci and sap)")  # fmt: skip
    if model.resources.gpu > 1 and not float(model.resources.gpu).is_integer():
        raise SpecError(f"resources.gpu: expected a fraction ≤ 1 or a whole number, got {model.resources.gpu}")
    return SweepSpec(name=model.name, base=model.base, base_config=base_config, space=space, search=model.search,
                     resources=model.resources, tracking=model.tracking, storage=model.storage, ray=model.ray,
                     frontier=model.frontier, eval=model.eval, raw=data)  # fmt: skip


def _dataset_names(base: str, space: dict[str, Any]) -> list[str]:
    """The dataset kinds a trial can get: the base's, and those a ``dataset`` or ``dataset.name`` choice offers."""
    names = [base]
    for path in ("dataset", "dataset.name"):
        for value in corners(space[path]) if path in space else ():
            name = value.get("name") if isinstance(value, dict) else value
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def _train_config_key(error: dict, data: dict, source: str) -> str | None:
    """The error for a train config's field at the top of a spec: a train config given as a spec, or a field (or a
    ``--set``) that belongs under ``base``."""
    loc = error["loc"]
    if error["type"] != "extra_forbidden" or len(loc) != 1 or loc[0] not in TrainConfig.model_fields:
        return None
    if "base" not in data and "search" not in data:
        return (f"{source}: this is a train config (it has {loc[0]}, no base or search): train it with `bvae train "
                f"{source}`, or sweep it from a spec that holds it as base, beside name and search")  # fmt: skip
    return (f"{loc[0]}: unknown key in a sweep spec; the train config's fields go under base (base.{loc[0]}…; on the "
            f"command line --set base.{loc[0]}….=VALUE)")  # fmt: skip


def _absolute(path: Any) -> Any:
    """A local data path made absolute against the working directory (URIs and non-paths as they are)."""
    if not isinstance(path, str) or not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def absolute_data_paths(data: dict) -> dict:
    """Every relative local data path made absolute against the working directory of the command — ``base.dataset.
    path`` and the paths the search space offers (``dataset.path`` values, ``dataset`` options): trials run in other
    processes and directories, and a resumed sweep must read the same file."""
    data = copy.deepcopy(data)
    dataset = data.get("base", {}).get("dataset") if isinstance(data.get("base"), dict) else None
    if isinstance(dataset, dict) and "path" in dataset:
        dataset["path"] = _absolute(dataset["path"])
    space = data.get("search", {}).get("space") if isinstance(data.get("search"), dict) else None
    if not isinstance(space, dict):
        return data
    for key, entry in space.items():
        options = entry.get("choice") if isinstance(entry, dict) and isinstance(entry.get("choice"), list) else None
        if options is None:
            continue
        if key == "dataset.path":
            entry["choice"] = [_absolute(o) for o in options]
        elif key == "dataset":
            for option in options:
                if isinstance(option, dict) and "path" in option:
                    option["path"] = _absolute(option["path"])
    return data


_FACTOR_DATASETS = ("dsprites", "blobs")
_CODE_BASED_METRICS = ("mig", "dci", "sap")  # bvae_core.metrics.compute.CODE_BASED: a file's rows will do
_SCHEDULER_METRICS = ("nelbo", "rate", "distortion", "train/loss")
_LOWER_IS_BETTER = ("nelbo", "distortion", "train/loss")  # (rate: a sweep may keep its most informative trials)


def _check_paths(model: _SpecModel, space: dict[str, Distribution]) -> None:
    """Every search path must land on a field of the train config and every value it can take must be valid there:
    each end of each range, each option of each choice, nested ones included, and a value inside each real range."""
    for path, value in model.search.space.items():
        for inside in (False, True):
            for candidate in corners(value, inside):
                data = copy.deepcopy(model.base)
                set_dotted(data, path, candidate)
                try:
                    parse_config(data)
                except ConfigError as e:
                    message = str(e)
                    if "unknown key" in message:
                        message = f"{path} is not a field of the train config ({message})"
                    elif inside:  # both ends passed: the field takes whole numbers
                        message = (f"a value inside its range is refused ({message}); a field of whole numbers is "
                                   f"searched with {{int: [low, high]}} or {{int_log: [low, high]}}")  # fmt: skip
                    raise SpecError(f"search.space.{path}: {message}") from None


def _check_nested_names(space: dict[str, Distribution]) -> None:
    """Nested parameters are named ``<path>.<sub-path>``; two options may share a name only with one distribution."""
    for path, dist in space.items():
        if not isinstance(dist, Choice):
            continue
        seen: dict[str, Any] = {}
        for option in dist.options:
            for sub, value in nested_distributions(option):
                if seen.setdefault(sub, value) != value:
                    raise SpecError(f"search.space.{path}: options nest {sub} with different distributions "
                                    f"({seen[sub]} and {value}); give them the same one")  # fmt: skip


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read a spec file and apply ``--set key.path=value`` overrides (paths into the spec, e.g. base.train.steps)."""
    data = load_config_file(path, list(overrides))
    data.setdefault("name", Path(path).stem)
    return parse_spec(data, str(path))


def dump_spec(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.raw, sort_keys=False)
