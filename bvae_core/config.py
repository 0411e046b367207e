"""The train config: typed, validated once, every error naming its field (docs/contracts.md, "Train config").

A config is plain YAML/dict data; :func:`parse_config` turns it into a :class:`TrainConfig` or raises
:class:`ConfigError` with one line such as ``objective.beta: expected a number > 0, got -1``.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .schedules import ScheduleValue, linear_ramp


def _refuse_booleans(value: Any) -> Any:
    """pydantic reads ``true`` as 1 where a number is meant (``steps: true`` would train 1 step): refuse it."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_for_number", "Expected a number, not true/false")
    return value


NotBool = BeforeValidator(_refuse_booleans)
Int = Annotated[int, NotBool]
Float = Annotated[float, NotBool]
PositiveFloat = Annotated[float, NotBool, Field(gt=0, allow_inf_nan=False)]  # a finite number above 0
PositiveInt = Annotated[int, NotBool, Field(gt=0)]
# a seed: torch's generators keep its low 32 bits (seed 2**32 is seed 0, -1 is 2**32 - 1), and the noise draws use
# seed + 1, so 0 ≤ seed < 2**32 - 1 keeps distinct seeds distinct
Seed = Annotated[int, NotBool, Field(ge=0, lt=2**32 - 1)]
# held-out examples: the standard errors and the active units are variances over them, so at least 2
HeldOutCount = Annotated[int, NotBool, Field(ge=2)]


class ConfigError(ValueError):
    """A user's config is wrong; the message is one line naming the field and what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no NaN or ±inf anywhere


# ---------------------------------------------------------------- datasets
#: dSprites' factor combinations: shape 3 × scale 6 × orientation 40 × x 32 × y 32 (Matthey et al. 2017)
DSPRITES_COMBINATIONS = 3 * 6 * 40 * 32 * 32


class DSpritesData(_Strict):
    name: Literal["dsprites"]
    resolution: Literal[64, 32] = 64
    n_test: Annotated[int, NotBool, Field(ge=2, lt=DSPRITES_COMBINATIONS)] | None = None  # the rest train
    split_seed: Seed = 0


class BlobsData(_Strict):
    name: Literal["blobs"]
    resolution: Annotated[int, NotBool, Field(ge=8, le=512)] = 32  # any for mlp/linear; burgess and conv take 32 or 64
    grid: PositiveInt = 32
    sigma: PositiveFloat = 2.0
    n_test: HeldOutCount | None = None
    split_seed: Seed = 0

    @model_validator(mode="after")
    def _check_split(self) -> "BlobsData":
        positions = self.grid**2
        if positions < 3:
            raise ValueError(f"dataset.grid: expected at least 2 (grid² positions: 2 held out to evaluate, the rest to "
                             f"train), got {self.grid}")  # fmt: skip
        if self.n_test is not None and self.n_test >= positions:
            raise ValueError(f"dataset.n_test: expected fewer than the grid's {positions} positions, got {self.n_test}")
        return self


class GaussianData(_Strict):
    name: Literal["gaussian"]
    eigenvalues: Annotated[list[PositiveFloat], Field(min_length=1)]
    rotate: bool = False
    n_train: PositiveInt = 50_000
    n_test: HeldOutCount = 10_000
    data_seed: Seed = 0


class FileData(_Strict):
    name: Literal["file"]
    path: str
    image_column: str = "image"
    factor_columns: list[str] | None = None
    image_shape: list[PositiveInt] | None = None
    test_fraction: Annotated[float, NotBool, Field(gt=0, lt=1)] = 0.1
    split_seed: Seed = 0


DatasetConfig = Annotated[Union[DSpritesData, BlobsData, GaussianData, FileData], Field(discriminator="name")]


# ---------------------------------------------------------------- model
class BernoulliLikelihood(_Strict):
    kind: Literal["bernoulli"]


class GaussianLikelihood(_Strict):
    kind: Literal["gaussian"]
    # ≥ 1e-6: σ² must stay a normal float (σ = 1e-300 squared is 0, and log 2πσ² a math domain error)
    sigma: Annotated[float, NotBool, Field(ge=1e-6)] = 1.0


Likelihood = Annotated[Union[BernoulliLikelihood, GaussianLikelihood], Field(discriminator="kind")]


class ModelConfig(_Strict):
    arch: Literal["burgess", "conv", "mlp", "linear"] = "burgess"
    latent_dim: PositiveInt = 10
    likelihood: Likelihood = BernoulliLikelihood(kind="bernoulli")
    hidden: PositiveInt = 256  # width of the mlp's hidden layers (burgess: fixed at 256 by the paper)


# ---------------------------------------------------------------- objective and schedules
# A schedule kind lives in one place: its class below (fields, defaults, what it computes at a step, whether it uses
# objective.beta, how figures draw it) and its entry in SCHEDULE_KINDS. Nothing else names the kinds.
class ScheduleConfig(_Strict):
    """What every schedule kind says about itself."""

    uses_beta: ClassVar[bool] = True  # objective.beta weighs the KL (else it is neither shown nor logged)
    label: ClassVar[str] = "?"  # the figures' legend
    marker: ClassVar[str] = "P"  # matplotlib marker
    symbol: ClassVar[str] = "cross"  # plotly marker symbol

    def value(self, beta: float, step: int) -> ScheduleValue:
        """β(t), C(t) and free bits at ``step``."""
        raise NotImplementedError

    def cut_short(self, beta: float, steps: int) -> str | None:
        """Why a run of ``steps`` ends before this schedule reaches its end (its ramp is longer), else None."""
        return None


class ConstantSchedule(ScheduleConfig):
    """Plain β-VAE (Higgins et al. 2017): loss = distortion + β·KL."""

    kind: Literal["constant"]
    label: ClassVar[str] = "β-VAE (constant β)"
    marker: ClassVar[str] = "o"
    symbol: ClassVar[str] = "circle"

    def value(self, beta: float, step: int) -> ScheduleValue:
        return ScheduleValue(beta=beta, capacity=None)


class LinearCapacitySchedule(ScheduleConfig):
    """Burgess et al. 2018 eq. (2): loss = distortion + γ·|KL − C(t)|, C ramped linearly from 0 to c_max."""

    kind: Literal["linear_capacity"]
    uses_beta: ClassVar[bool] = False  # γ weighs |KL − C|: objective.beta is not used
    label: ClassVar[str] = "controlled capacity (C ramp)"
    marker: ClassVar[str] = "s"
    symbol: ClassVar[str] = "square"
    c_max: Annotated[float, NotBool, Field(ge=0)] = 25.0  # Burgess et al. 2018, §A.2: 25 nats for dSprites
    ramp_steps: PositiveInt = 100_000  # Burgess et al. 2018, §A.2: over 100,000 iterations
    gamma: PositiveFloat = 1000.0  # Burgess et al. 2018, §A.2: γ = 1000 (here: the bound on the multiplier λ)
    # How fast λ follows KL − C: λ += multiplier_lr·(KL − C)·max(λ, 1) per step (objectives.capacity_multiplier_step).
    multiplier_lr: PositiveFloat = 0.02

    def value(self, beta: float, step: int) -> ScheduleValue:
        # Burgess et al. 2018, §3 and §A.2: C increased linearly from 0 to c_max over ramp_steps.
        return ScheduleValue(beta=self.gamma, capacity=linear_ramp(step, 0.0, self.c_max, self.ramp_steps),
                             multiplier_lr=self.multiplier_lr)

    def cut_short(self, beta: float, steps: int) -> str | None:
        if self.ramp_steps <= steps:
            return None
        return (f"objective.schedule.ramp_steps ({self.ramp_steps}) is longer than train.steps ({steps}): C(t) ends "
                f"at {100 * steps / self.ramp_steps:.2g}% of c_max ({self.value(beta, steps).capacity:.3g} of "
                f"{self.c_max:g} nats)")  # fmt: skip


class WarmupSchedule(ScheduleConfig):
    """KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): β(t) ramps linearly from beta_start to β."""

    kind: Literal["warmup"]
    label: ClassVar[str] = "KL warm-up"
    marker: ClassVar[str] = "^"
    symbol: ClassVar[str] = "triangle-up"
    warmup_steps: PositiveInt = 10_000
    beta_start: Annotated[float, NotBool, Field(ge=0)] = 0.0

    def value(self, beta: float, step: int) -> ScheduleValue:
        return ScheduleValue(beta=linear_ramp(step, self.beta_start, beta, self.warmup_steps), capacity=None)

    def cut_short(self, beta: float, steps: int) -> str | None:
        if self.warmup_steps <= steps:
            return None
        return (f"objective.schedule.warmup_steps ({self.warmup_steps}) is longer than train.steps ({steps}): β(t) "
                f"ends at {self.value(beta, steps).beta:.3g}, {100 * steps / self.warmup_steps:.2g}% of the way from "
                f"beta_start {self.beta_start:g} to objective.beta {beta:g}")  # fmt: skip


class FreeBitsSchedule(ScheduleConfig):
    """Free bits (Kingma et al. 2016, eq. 15): each latent's batch-mean KL below `free_bits` nats is not penalised."""

    kind: Literal["free_bits"]
    label: ClassVar[str] = "free bits"
    marker: ClassVar[str] = "D"
    symbol: ClassVar[str] = "diamond"
    free_bits: Annotated[float, NotBool, Field(ge=0)] = 0.5

    def value(self, beta: float, step: int) -> ScheduleValue:
        return ScheduleValue(beta=beta, capacity=None, free_bits=self.free_bits)


#: Every schedule kind: add a class above and name it here.
SCHEDULE_KINDS: tuple[type[ScheduleConfig], ...] = (ConstantSchedule, LinearCapacitySchedule, WarmupSchedule,
                                                     FreeBitsSchedule)  # fmt: skip
Schedule = Annotated[Union[SCHEDULE_KINDS], Field(discriminator="kind")]  # type: ignore[valid-type]


def schedule_class(kind: str | None) -> type[ScheduleConfig]:
    """The class of a schedule kind by name (the base class, with its neutral style, for an unknown one)."""
    return next((cls for cls in SCHEDULE_KINDS if kind in typing.get_args(cls.model_fields["kind"].annotation)),
                ScheduleConfig)  # fmt: skip


class ObjectiveConfig(_Strict):
    beta: PositiveFloat = 1.0
    schedule: Schedule = ConstantSchedule(kind="constant")

    def ignored_paths(self) -> tuple[str, ...]:
        """Dotted config paths this objective does not use (so they are neither shown nor logged as if it did)."""
        return () if self.schedule.uses_beta else ("objective.beta",)


# ---------------------------------------------------------------- training
def _device_name(value: str) -> str:
    """A device this trainer runs on: auto, cpu, cuda, cuda:N or mps (whether it is present is checked at start)."""
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise PydanticCustomError("device", "expected auto, cpu, cuda, cuda:N or mps")


def _whole_number(value: Any) -> int | None:
    """``value`` as the whole number pydantic reads it as (an int, an integral float, a string of one), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, (str, float)) else value
    except ValueError:
        return None
    if isinstance(number, float):
        return int(number) if number.is_integer() else None
    return number if isinstance(number, int) else None


class TrainSettings(_Strict):
    steps: PositiveInt = 10_000
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 5.0e-4  # Burgess et al. 2018, §A.1: Adam, learning rate 5e-4
    eval_every: PositiveInt = 1_000
    eval_batch_size: PositiveInt = 512
    n_eval: HeldOutCount | None = None  # held-out examples used by evaluate(); None = the whole split
    log_every: PositiveInt = 100
    device: Annotated[str, AfterValidator(_device_name)] = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    threads: PositiveInt | None = None  # torch intra-op threads on CPU; None = torch's default
    channels_last: bool = True
    cuda_graphs: bool = True  # on CUDA, capture the training step once as a CUDA graph and replay it

    @model_validator(mode="before")
    @classmethod
    def _eval_every_default(cls, data: Any) -> Any:
        """``eval_every`` left out: every 1000 steps, or once at the end of a shorter run (``--set train.steps=200``
        alone then works); given, it must be ≤ ``steps`` (TrainConfig says so)."""
        if isinstance(data, dict) and "eval_every" not in data:
            steps = _whole_number(data.get("steps"))  # as pydantic will read it: 200, 200.0, 2e2 or "200"
            if steps is not None and 0 < steps < 1_000:
                data = {**data, "eval_every": steps}
        return data


class TrainConfig(_Strict):
    name: str = "bvae"
    seed: Seed = 0
    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _check_combinations(self) -> "TrainConfig":
        if self.train.eval_every > self.train.steps:
            raise ValueError(f"train.eval_every: expected ≤ train.steps ({self.train.steps}), got {self.train.eval_every}; "
                             f"when you shorten a run, lower eval_every with it")  # fmt: skip
        if self.model.arch in ("burgess", "conv") and self.dataset.name == "gaussian":
            raise ValueError(f"model.arch: expected mlp or linear for vector data (dataset gaussian), got {self.model.arch}")
        if self.model.arch in ("burgess", "conv") and self.dataset.name == "blobs" and self.dataset.resolution not in (32, 64):
            raise ValueError(f"dataset.resolution: expected 32 or 64 for model.arch {self.model.arch} (any ≥ 8 for mlp "
                             f"or linear), got {self.dataset.resolution}")  # fmt: skip
        if self.dataset.name == "gaussian" and self.model.likelihood.kind == "bernoulli":
            raise ValueError("model.likelihood: bernoulli needs values in [0, 1]; the gaussian dataset's are real "
                             "numbers: use {kind: gaussian, sigma: 1.0}")  # fmt: skip
        return self

    def ignored_fields(self) -> dict[str, str]:
        """Dotted fields this config has that its training never reads, with why (runs differing in one only are
        copies of each other)."""
        ignored = {}
        if not self.objective.schedule.uses_beta:
            ignored["objective.beta"] = (f"objective.schedule {self.objective.schedule.kind} weighs the KL by its "
                                         f"gamma, not β")  # fmt: skip
        if self.model.arch != "mlp":
            ignored["model.hidden"] = f"model.arch {self.model.arch} has no hidden width to set (only mlp has)"
        return ignored


def objective_settings(config: TrainConfig) -> dict[str, Any]:
    """What a run's objective actually uses, flat: ``beta`` (only where β weighs the KL), ``schedule`` (its kind)
    and the schedule's own fields (``c_max``, ``gamma``, ``ramp_steps``, ``warmup_steps``, …), with ``latent_dim``,
    ``arch``, ``dataset`` and ``seed``. A new schedule kind needs no change here: its fields come from its config."""
    schedule = config.objective.schedule
    settings: dict[str, Any] = {"beta": config.objective.beta} if schedule.uses_beta else {}
    settings.update({"schedule": schedule.kind, **schedule.model_dump(exclude={"kind"})})
    settings.update({"latent_dim": config.model.latent_dim, "arch": config.model.arch, "dataset": config.dataset.name,
                     "seed": config.seed})  # fmt: skip
    return settings


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Annotated, Optional and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _tag_values(model: type[BaseModel]) -> tuple:
    """The literal values of a model's discriminator field (``kind`` or ``name``), if it has one."""
    field = model.model_fields.get("kind") or model.model_fields.get("name")
    return typing.get_args(field.annotation) if field is not None else ()


def known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model accepts at ``loc`` (a pydantic error location, tags of discriminated unions included)."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in candidates if part in _tag_values(m)]
        if tagged:  # a discriminated union's tag: narrow to its member
            candidates = tagged
            continue
        fields = [m.model_fields[part] for m in candidates if part in m.model_fields]
        candidates = [sub for f in fields for sub in _models_in(f.annotation)]
        if not candidates:
            return []
    return sorted({key for m in candidates for key in m.model_fields})


def _did_you_mean(model: type[BaseModel] | None, loc: tuple) -> str:
    """``; did you mean 'beta'?`` for a mistyped key, else the keys that are accepted there."""
    if model is None or not loc:
        return ""
    keys = known_keys(model, tuple(loc[:-1]))
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; expected one of {', '.join(keys)}" if keys else ""


def _describe(err: dict[str, Any], model: type[BaseModel] | None = None) -> str:
    parts, after_tag = [], False
    for p in err["loc"]:  # pydantic puts a tagged union's tag in the path: drop it (not a field named like it)
        if isinstance(p, str) and p in _TAGS and not after_tag:
            after_tag = True
            continue
        parts.append(str(p))
        after_tag = False
    loc = ".".join(parts)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (not part of the config){_did_you_mean(model, err['loc'])}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind == "union_tag_invalid":
        tag, expected = err["ctx"]["discriminator"].strip("'"), err["ctx"]["expected_tags"]
        return f"{loc}.{tag}: expected one of {expected.replace(chr(39), '')}, got {err['input'].get(tag)!r}"
    if kind == "union_tag_not_found":
        return f"{loc}.{err['ctx']['discriminator'].strip(chr(39))}: required field is missing"
    if kind == "value_error":
        # our own validators already wrote "field: expected …"
        return msg.removeprefix("Value error, ")
    got = repr(err.get("input"))
    got = got if len(got) <= 80 else got[:79] + "…"  # a long value is not worth a screenful
    return f"{loc or '<config>'}: {msg[0].lower() + msg[1:]}, got {got}"


_TAGS = {"dsprites", "blobs", "gaussian", "file", "bernoulli", *(typing.get_args(c.model_fields["kind"].annotation)[0]
                                                                for c in SCHEDULE_KINDS)}  # fmt: skip


def parse_config(data: Any) -> TrainConfig:
    """Validate a train config given as a dict (e.g. from YAML); raise :class:`ConfigError` naming the field."""
    if isinstance(data, TrainConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"<config>: expected a mapping of settings, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")  # a typo explains the rest
        raise ConfigError(_describe(errors[0], TrainConfig)) from None


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-4`` and ``5E3`` as numbers (YAML 1.2, and what a user means) — YAML 1.1 needs
    a dot (``1.0e-4``) and reads ``1e-4`` as a string, which a search-space bound then rejects — and refusing a key
    given twice in one mapping (YAML 1.2 forbids it; PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice in one mapping",
                                                        key_node.start_mark)  # fmt: skip
            seen.add(key) if isinstance(key, typing.Hashable) else None
        return super().construct_mapping(node, deep=deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """YAML text as Python values (:class:`YamlLoader`)."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader


def load_config_file(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Read a YAML config and apply ``key.path=value`` overrides (values parsed as YAML); raise :class:`ConfigError`."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"--set {item}: expected key.path=value (dotted keys, none empty)")
        if not raw.strip():  # YAML reads nothing as null: "train.steps: input should be a valid integer, got None"
            raise ConfigError(f"--set {item}: no value after '='; give one (null, if that is what you mean)")
        try:
            value = load_yaml(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not valid YAML") from None
        set_dotted(data, key.strip(), value)
    return data


def flatten_dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: every leaf of nested mappings under its dotted path (the inverse of
    :func:`set_dotted`; an empty mapping has no leaf)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_dotted(value, path + "."))
        else:
            flat[path] = value
    return flat


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``path = "a.b.c"``, creating intermediate mappings. A mapping keyed by dotted
    paths itself (a sweep's ``search.space``: ``{"objective.beta": …}``) takes the rest of ``path`` as one key, so
    ``search.space.objective.beta`` names that entry."""
    keys = path.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        rest = ".".join(keys[i:])
        if rest in node or any("." in str(k) for k in node):
            node[rest] = value
            return
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[: i + 1])}: is a value, cannot set {path}")
        node = child
    node[keys[-1]] = value
