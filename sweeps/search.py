"""Optuna through Ray Tune's ``OptunaSearch``, multi-objective, with the stock integration's gaps corrected:

- a trial stopped early by a scheduler is told to Optuna as PRUNED (stock: COMPLETE with its partial values);
- a trial with a non-finite or missing objective, or one that errored, is told as FAIL (stock: left RUNNING);
- concurrency through ``ConcurrencyLimiter``; an optional ASHA scheduler on a metric the spec names.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from .outcome import trial_outcome
from .searcher_state import SweepSearchGenerator
from .space import DefineByRun, grid_values, most_evaluations, planned_trials
from .spec import SweepSpec

logger = logging.getLogger(__name__)


def trial_state(result: dict[str, Any] | None, objectives: list[str], error: bool) -> tuple[optuna.trial.TrialState, list[float] | None]:
    """The Optuna state and values a finished Tune trial is told with (:func:`sweeps.outcome.trial_outcome`)."""
    outcome = trial_outcome(result, error=error, objectives=objectives)
    state = optuna.trial.TrialState[outcome.optuna_state]
    if state != optuna.trial.TrialState.COMPLETE:
        return state, None
    return state, [float(result[name]) for name in objectives]


def tell_outcome(study: optuna.Study, trial: optuna.Trial | int, result: dict[str, Any] | None, objectives: list[str],
                 error: bool) -> None:  # fmt: skip
    """Tell ``study`` how ``trial`` ended (:func:`trial_state`); a bookkeeping error marks it FAIL rather than leave
    the study RUNNING."""
    state, values = trial_state(result, objectives, error)
    try:
        study.tell(trial, values, state=state)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not tell Optuna about trial %s (%s); marking it FAIL", trial, exc)
        study.tell(trial, None, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


class SweepSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna the truth about how each trial ended."""

    def _suggest_from_define_by_run_func(self, func: Any, ot_trial: optuna.Trial) -> dict:
        # OptunaSearch warns when the space takes over a second and tells the user to move "actual computation" into
        # the trainable. Here that time is the sampler's own proposal, made inside the space's suggest_* calls (a GP
        # sampler fits its model there: seconds once it has a few dozen trials) — nothing a user could move.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
            return super()._suggest_from_define_by_run_func(func, ot_trial)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        tell_outcome(self._ot_study, self._ot_trials[trial_id], result, list(self.metric), error)
        self._completed_trials.add(trial_id)
        if error:  # a resume trains it again (reopen)
            if self.__dict__.get("_errored") is None:
                self._errored = set()
            self._errored.add(trial_id)

    def reopen(self, trial_id: str, saved_status: str = "ERROR") -> bool:
        """``trial_id`` ended in an error and ``bvae sweep resume`` trains it again (:mod:`sweeps.searcher_state`;
        ``saved_status``: Tune's saved status of it). Optuna's FAIL is final, so its values become a new asked
        trial, told when it ends. False: it had not errored here."""
        errored = self.__dict__.get("_errored", set())
        if errored is None:  # restored from a version that kept no errors: a trial saved as errored, told FAIL
            ot_trial = self._ot_trials.get(trial_id)
            if saved_status != "ERROR" or trial_id not in self._completed_trials or ot_trial is None or \
                    self._ot_study.trials[ot_trial.number].state != optuna.trial.TrialState.FAIL:  # fmt: skip
                return False
        elif trial_id not in errored:
            return False
        else:
            errored.discard(trial_id)
        self._ot_study.enqueue_trial(dict(self._ot_trials[trial_id].params), skip_if_exists=False)
        self._ot_trials[trial_id] = self._ot_study.ask()
        self._suggest_from_define_by_run_func(self._space, self._ot_trials[trial_id])  # the enqueued values
        self._completed_trials.discard(trial_id)
        return True

    def save(self, checkpoint_path: str) -> None:
        self.__dict__.setdefault("_errored", set())  # saved even when empty: its absence marks an older state
        super().save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.__dict__.pop("_errored", None)
        super().restore(checkpoint_path)
        self.__dict__.setdefault("_errored", None)  # None: saved by a version that kept no errors (see reopen)

    def release(self, trial_id: str) -> None:
        """Tune will never run ``trial_id`` (:mod:`sweeps.searcher_state`): its asked Optuna trial, with the values
        the sampler chose, goes to the next trial this searcher is asked for."""
        ot_trial = self._ot_trials.pop(trial_id, None)
        if ot_trial is not None and trial_id not in self._completed_trials:
            self.__dict__.setdefault("_released", []).append(ot_trial)

    def pending(self) -> set[str]:
        """The trials asked for and not yet told."""
        return set(self._ot_trials) - self._completed_trials

    def knows(self, trial_id: str) -> bool:
        return trial_id in self._ot_trials or trial_id in self._completed_trials

    def register(self, trial_id: str, params: dict[str, Any]) -> None:
        """Take ``trial_id``, which Tune created with ``params`` after this searcher's state was saved
        (:mod:`sweeps.searcher_state`), as an asked trial with those values: Optuna is told when it ends."""
        self._ot_study.enqueue_trial(params, skip_if_exists=False)
        self._ot_trials[trial_id] = self._ot_study.ask()
        self._suggest_from_define_by_run_func(self._space, self._ot_trials[trial_id])  # the enqueued values

    def suggest(self, trial_id: str) -> dict | None:
        released = self.__dict__.get("_released")
        if released and trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = released.pop(0)  # OptunaSearch reuses a known trial: the same values
        return super().suggest(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls ``study.stop()`` after the last grid point, which is only legal inside ``optimize``; under
    Tune's ask/tell the trial count already bounds the sweep, so skip that."""

    def after_trial(self, study, trial, state, values) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError:
            pass


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The sampler the spec names, seeded. Startup (random) trials scale with the budget so small sweeps still
    get model-based proposals."""
    s = spec.search
    startup = max(4, min(10, s.trials // 3))
    if s.sampler == "tpe":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # `group` is stable enough
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup, multivariate=True, group=True,
                                          constant_liar=True)  # fmt: skip
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(4, min(50, s.trials // 3)))
    if s.sampler == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup, warn_independent_sampling=False)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "grid":
        return _AskTellGridSampler(grid_values(spec.space), seed=s.seed)
    raise ValueError(f"search.sampler: unknown sampler {s.sampler!r}")


def fused(spec: SweepSpec) -> bool:
    """Whether the sweep trains fused cohorts (``search.cohort`` > 1, once ``auto`` is resolved)."""
    if spec.search.cohort == "auto":
        raise ValueError("search.cohort: auto is resolved by sweeps.cohort_size.resolve_cohort before the search is built")
    return spec.search.cohort > 1


def build_searcher(spec: SweepSpec, concurrency: int) -> SweepSearchGenerator:
    """The sweep's search for Tune: its searcher (Optuna, or fused cohorts) behind a concurrency limit, in a generator
    that heals a searcher state saved out of step with the trials on resume (:mod:`sweeps.searcher_state`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher: Searcher
    if fused(spec):
        from .cohorts import CohortSearch

        searcher = CohortSearch(spec, make_sampler(spec), planned_trials(spec))
    else:
        searcher = SweepSearch(space=DefineByRun(spec.space), metric=list(spec.search.objectives),
                               mode=["min"] * len(spec.search.objectives), sampler=make_sampler(spec))  # seeded
    return SweepSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=concurrency))


def build_scheduler(spec: SweepSpec) -> TrialScheduler | None:
    """Tune's ASHA on the spec's metric; None without ``search.scheduler``, and with fused cohorts, whose members are
    judged one by one inside their trial (:mod:`sweeps.member_scheduler`)."""
    settings = spec.search.scheduler
    if settings is None or fused(spec):
        return None
    evaluations = most_evaluations(spec)
    return ASHAScheduler(time_attr="training_iteration", metric=settings.metric, mode=settings.mode,
                         max_t=evaluations, grace_period=min(settings.grace_period, evaluations),
                         reduction_factor=settings.reduction_factor)  # fmt: skip


def optuna_study(search: SearchGenerator | Searcher) -> optuna.Study:
    """The Optuna study inside the sweep's search (:func:`build_searcher`), whatever wraps it."""
    inner: Any = search
    while hasattr(inner, "searcher"):
        inner = inner.searcher
    return inner.study
