"""Fused cohorts in a sweep (``search.cohort: K``): one Ray trial trains K sampled configurations as one model
(:class:`bvae_core.cohort.Cohort`), and each member stays a trial everywhere a user looks.

- :class:`CohortSearch` asks Optuna one trial per member (told one by one when the cohort ends) and puts members
  that can share a model (same :func:`~bvae_core.cohort.cohort_key`) in one Tune trial; a sampled configuration
  that cannot join the cohort being formed waits for the next one. It ends the search when the budget is asked.
  With ``search.scheduler`` it starts the sweep's rungs actor (:mod:`sweeps.member_scheduler`) that judges each
  member on its own, and keeps what it records for a resume.
- :class:`MemberFanOut` wraps the driver's callbacks (MLflow tracking, live frontier, progress): every hook about
  a cohort trial becomes one hook per member, with a :class:`MemberTrial` view that has the member's id, params,
  last result, checkpoint and error — so each member gets its own MLflow child run (found again on resume, as a
  trial's is), its own progress line and its own frontier point.

A cohort trial's config is ``{"members": [{"number": n, "params": {...}}, ...]}`` (n: the Optuna trial number;
with ``search.scheduler`` also ``"rungs_actor"``: :mod:`sweeps.member_scheduler`);
its results carry ``{"members": {"<j>": {metrics}}}`` and its final checkpoint a folder ``member_<j>/`` per member
holding a plain ``Trainer`` checkpoint and the member's figures. Member ``j`` of Tune trial ``t`` is trial
``t-j`` in MLflow, the progress lines and the frontier.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.search import Searcher

from bvae_core.cohort import cohort_key

from .member_scheduler import evaluation_index, start_rungs_actor
from .space import DefineByRun, most_evaluations
from .spec import SweepSpec


MEMBERS_KEY = "members"

#: Set on a member's result that repeats an earlier one (the member was stopped or failed before this report): the
#: driver's callbacks skip it, so nothing is logged twice; it stays the member's last result for its outcome.
REPEAT_KEY = "repeat"

#: Set on a member's result at the evaluation where the scheduler stopped it (sweeps.member_scheduler).
STOPPED_KEY = "stopped_early"

#: In a cohort trial's config when the sweep has a scheduler: the name of the actor judging its members.
RUNGS_KEY = "rungs_actor"


def member_folder(j: int) -> str:
    """The folder of member ``j``'s final checkpoint and figures inside its cohort trial's checkpoint."""
    return f"member_{j}"


def member_id(trial_id: str, j: int) -> str:
    return f"{trial_id}-{j}"


def is_cohort(config: Any) -> bool:
    return isinstance(config, dict) and MEMBERS_KEY in config


def member_result(result: dict[str, Any] | None, j: int) -> dict[str, Any] | None:
    """Member ``j``'s metrics with Tune's own fields of the cohort's result (iteration, time). ``result`` as
    reported (``{"members": {"<j>": {...}}}``) or as Tune flattens it for searchers (``members/<j>/rate``)."""
    if not result:
        return None
    if MEMBERS_KEY in result:
        own = result[MEMBERS_KEY].get(str(j))
    else:
        prefix = f"{MEMBERS_KEY}/{j}/"
        own = {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)} or None
    if own is None:
        return None
    shared = {k: v for k, v in result.items() if k != MEMBERS_KEY and not k.startswith(f"{MEMBERS_KEY}/")}
    return {**shared, **own}


# ---------------------------------------------------------------------------------------------------- members
@dataclass
class MemberTrial:
    """What the callbacks read of a trial (``trial_id``, ``config``, ``last_result``, ``checkpoint``,
    ``error_file``, ``status``, ``num_failures``), for one member of a cohort trial; ``cohort``: the id of the Tune
    trial it trains in (its errors and retries are that trial's)."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] | None
    checkpoint: Any
    error_file: str | None
    status: str
    num_failures: int = 0
    cohort: str | None = None


def members_of(trial: Any, result: dict[str, Any] | None = None) -> list[MemberTrial]:
    """The member views of a cohort trial (``result``: the result being reported, else the trial's last)."""
    from ray import tune

    config = getattr(trial, "config", None) or {}
    result = result if result is not None else getattr(trial, "last_result", None)
    checkpoint = getattr(trial, "checkpoint", None)
    views = []
    for j, member in enumerate(config[MEMBERS_KEY]):
        own_checkpoint = None
        if checkpoint is not None:
            own_checkpoint = tune.Checkpoint(f"{checkpoint.path.rstrip('/')}/{member_folder(j)}",
                                             filesystem=checkpoint.filesystem)  # fmt: skip
        own = member_result(result, j)
        status = ENDED_STATUS if ended_early(own) else getattr(trial, "status", "")
        views.append(MemberTrial(member_id(trial.trial_id, j), dict(member["params"]), own, own_checkpoint,
                                 getattr(trial, "error_file", None), status, getattr(trial, "num_failures", 0),
                                 trial.trial_id))  # fmt: skip
    return views


#: A member view's status once its own training has ended inside a cohort still training (Tune's word for ended).
ENDED_STATUS = "TERMINATED"


def ended_early(result: dict[str, Any] | None) -> bool:
    """Whether a member's result says it stopped training before its cohort: stopped by the scheduler, its loss
    went non-finite, or it repeats such a result."""
    return bool(result) and bool(result.get(STOPPED_KEY) or result.get(REPEAT_KEY) or result.get("error"))


def expand(trials: list[Any]) -> list[Any]:
    """Trials with each cohort trial replaced by its members."""
    out: list[Any] = []
    for trial in trials:
        out.extend(members_of(trial) if is_cohort(getattr(trial, "config", None)) else [trial])
    return out


class MemberFanOut(Callback):
    """Calls ``inner``'s hooks once per member for a cohort trial, as they are for a plain trial. A member that stops
    training before its cohort (stopped by the scheduler, or failed) ends then — its run ends, its progress line
    says so — not when the cohort ends; later hooks about the cohort pass it by."""

    def __init__(self, inner: Callback):
        self.inner = inner
        self._ended: set[str] = set()  # members ended early in this driver

    def setup(self, **info: Any) -> None:
        self.inner.setup(**info)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.inner.on_step_end(iteration, expand(trials), **info)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.inner.on_experiment_end(expand(trials), **info)

    def _each(self, hook: str, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        method = getattr(self.inner, hook)
        if not is_cohort(getattr(trial, "config", None)):
            method(iteration, trials, trial, **info)
            return
        everyone = expand(trials)
        if hook == "on_trial_result":
            result = info.pop("result")
            for view in members_of(trial, result):
                if view.last_result is None or view.last_result.get(REPEAT_KEY) or view.trial_id in self._ended:
                    continue  # (an ended member retrained from an older checkpoint reaches its end again: not news)
                method(iteration, everyone, view, result=view.last_result, **info)
                if ended_early(view.last_result) and view.trial_id not in self._ended:
                    self._ended.add(view.trial_id)
                    self.inner.on_trial_complete(iteration, everyone, view, **info)
            return
        for view in members_of(trial):
            if view.trial_id in self._ended:
                continue
            if view.status == ENDED_STATUS:  # ended before this driver (a resume): nothing of it trains again
                if hook in ("on_trial_complete", "on_trial_error"):  # end it as it ended (its end may not be written)
                    self._ended.add(view.trial_id)
                    self.inner.on_trial_complete(iteration, everyone, view, **info)
                continue
            method(iteration, everyone, view, **info)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._each("on_trial_start", iteration, trials, trial, **info)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._each("on_trial_result", iteration, trials, trial, result=result, **info)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._each("on_trial_complete", iteration, trials, trial, **info)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._each("on_trial_error", iteration, trials, trial, **info)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._each("on_trial_recover", iteration, trials, trial, **info)


# ---------------------------------------------------------------------------------------------------- search
class CohortSearch(Searcher):
    """Optuna's ask/tell behind Tune, K configurations per Tune trial (see the module docstring)."""

    def __init__(self, spec: SweepSpec, sampler: optuna.samplers.BaseSampler, trials: int):
        objectives = list(spec.search.objectives)
        super().__init__()  # no top-level metric: each member's objectives sit under "members" (Tune checks metrics)
        self.objectives = objectives
        self.size = spec.search.cohort
        self.budget = trials
        self._spec_raw = spec.raw
        self._define = DefineByRun(spec.space)
        self._study = optuna.create_study(directions=["minimize"] * len(objectives), sampler=sampler)
        self._params: dict[int, dict[str, Any]] = {}  # asked trial number → its sampled flat params
        self._waiting: dict[str, list[int]] = {}  # cohort key → asked trial numbers not yet in a Tune trial
        self._cohorts: dict[str, list[int]] = {}  # Tune trial id → its members' trial numbers
        self._told: set[int] = set()
        # Early stopping per member (sweeps.member_scheduler): the rungs actor and what it has recorded.
        self._scheduler = spec.search.scheduler
        self._max_evaluations = most_evaluations(spec)
        self._member_intervals: dict[int, int] = {}  # member trial number → its train.eval_every
        self._errored: set[int] | None = set()  # members told FAIL by their trial's error (None: an older state's)
        self._rungs_name = rungs_actor_name(spec)
        self._records: dict[tuple[str, int], tuple[float, bool]] = {}  # (member, evaluation) → (value, stopped)
        self._rungs: Any = None

    @property
    def study(self) -> optuna.Study:
        return self._study

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True

    def _key(self, params: dict[str, Any]) -> str:
        return cohort_key(self._config(params))

    def _config(self, params: dict[str, Any]) -> Any:
        from .spec import parse_spec

        return parse_spec(self._spec_raw).trial_config(params)

    def _member_eval_every(self, number: int) -> int:
        """A member's own ``train.eval_every`` (the space may search it), worked out once per member."""
        known = self.__dict__.setdefault("_member_intervals", {})  # a searcher saved before this field lacks it
        if number not in known:
            known[number] = self._config(self._params[number]).train.eval_every
        return known[number]

    def _ask(self) -> tuple[int, str]:
        trial = self._study.ask()
        self._define(trial)
        self._params[trial.number] = dict(trial.params)
        return trial.number, self._key(trial.params)

    def _ensure_rungs(self) -> None:
        if self._scheduler is not None and self._rungs is None:
            records = [(member, evaluation, value, stopped)
                       for (member, evaluation), (value, stopped) in self._records.items()]  # fmt: skip
            self._rungs = start_rungs_actor(self._rungs_name, self._scheduler, self._max_evaluations, records)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        self._ensure_rungs()  # before the first cohort trial can ask it
        members: list[int] = []
        key = next((k for k, numbers in self._waiting.items() if numbers), None)
        if key is not None:
            members, self._waiting[key] = self._waiting[key][: self.size], self._waiting[key][self.size :]
        while len(members) < self.size and len(self._params) - self.__dict__.get("_reasked", 0) < self.budget:
            number, its_key = self._ask()
            if key is None or its_key == key:
                key = its_key
                members.append(number)
            else:
                self._waiting.setdefault(its_key, []).append(number)
        if not members:
            return Searcher.FINISHED
        self._cohorts[trial_id] = members
        config: dict[str, Any] = {MEMBERS_KEY: [{"number": n, "params": dict(self._params[n])} for n in members]}
        if self._scheduler is not None:
            config[RUNGS_KEY] = self._rungs_name  # the trainable asks this actor whether a member stops
        return config

    def pending(self) -> set[str]:
        """The cohort trials with a member asked for and not yet told."""
        return {trial_id for trial_id, members in self._cohorts.items() if any(n not in self._told for n in members)}

    def release(self, trial_id: str) -> None:
        """Tune will never run ``trial_id`` (:mod:`sweeps.searcher_state`): its members, asked and not told, wait
        for the next cohort trial, first in line."""
        members = [n for n in self._cohorts.pop(trial_id, []) if n not in self._told]
        if members:
            key = self._key(self._params[members[0]])
            self._waiting = {key: members + self._waiting.get(key, []),
                             **{k: numbers for k, numbers in self._waiting.items() if k != key}}  # fmt: skip

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A member that stopped training (scheduler, non-finite loss) is told to Optuna now, not when its cohort
        ends. With a scheduler, keep what the rungs actor records and decides (a member's metric at each evaluation,
        and whether it was stopped there), to seed it again on resume."""
        for j, number in enumerate(self._cohorts.get(trial_id, [])):
            own = member_result(result, j)
            if not own or own.get(REPEAT_KEY):
                continue
            if ended_early(own):
                self._tell(number, own, error=False)
            if self._scheduler is None or not isinstance(own.get(self._scheduler.metric), (int, float)):
                continue
            evaluation = evaluation_index(own.get("step", 0), self._member_eval_every(number))
            self._records.setdefault((member_id(trial_id, j), evaluation), (float(own[self._scheduler.metric]),
                                                                            bool(own.get(STOPPED_KEY))))  # fmt: skip

    def _tell(self, number: int, own: dict[str, Any] | None, error: bool) -> None:
        from .search import tell_outcome

        if number not in self._told:
            tell_outcome(self._study, number, own, self.objectives, error)
            self._told.add(number)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        for j, number in enumerate(self._cohorts.get(trial_id, [])):
            if error and number not in self._told:  # a resume trains it again (reopen)
                if self.__dict__.get("_errored") is None:
                    self._errored = set()
                self._errored.add(number)
            self._tell(number, member_result(result, j), error)

    def reopen(self, trial_id: str, saved_status: str = "ERROR") -> bool:
        """Cohort trial ``trial_id`` ended in an error and ``bvae sweep resume`` trains it again
        (:mod:`sweeps.searcher_state`; ``saved_status``: Tune's saved status of it). Optuna's FAIL is final, so each
        member told FAIL by that error (not one that had ended before it) becomes a new asked trial with its values,
        told when it ends. False: none had."""
        errored = self.__dict__.get("_errored", set())
        if errored is None:  # restored from a version that kept no errors: members of a trial saved as errored,
            if saved_status != "ERROR":  # told FAIL (rarely one whose loss had gone non-finite before the error)
                return False
            errored = {n for n in self._told if self._study.trials[n].state == optuna.trial.TrialState.FAIL}
        numbers = self._cohorts.get(trial_id, [])
        reopened = False
        for j, number in enumerate(numbers):
            if number not in errored:
                continue
            errored.discard(number)
            self._study.enqueue_trial(self._params[number], skip_if_exists=False)
            trial = self._study.ask()
            self._define(trial)  # the enqueued values
            self._params[trial.number] = dict(trial.params)
            self.__dict__["_reasked"] = self.__dict__.get("_reasked", 0) + 1  # not part of the budget
            numbers[j] = trial.number
            reopened = True
        return reopened

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rungs": None}  # an actor handle belongs to the driver that made it

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.__dict__.update({"_errored": None, **state})  # None: saved by a version that kept no errors (reopen)
        self._rungs = None
        self._ensure_rungs()  # seeded with what the first driver recorded, before the restored trials ask it


def rungs_actor_name(spec: SweepSpec) -> str:
    """The name of the sweep's member-rungs actor: one per sweep (its storage folder), the same after a resume."""
    import hashlib

    from .member_scheduler import actor_name
    from .runner import experiment_path

    return actor_name(hashlib.sha1(experiment_path(spec).encode()).hexdigest()[:16])


def iter_member_params(config: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(j, flat params) of each member of a cohort trial's config."""
    for j, member in enumerate(config[MEMBERS_KEY]):
        yield j, dict(member["params"])
