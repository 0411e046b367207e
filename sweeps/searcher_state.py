"""A resumed sweep's searcher, made to agree with the trials Tune saved.

Tune saves a sweep as separate files — its trials (``experiment_state-*.json``), the search generator and concurrency
limiter (``search_gen_state-*.json``), the searcher itself (``searcher-state-*.pkl``) — and a background thread copies
them to storage one by one. A driver killed during that copy can leave files of two different saves side by side
(each of them whole: :mod:`sweeps.atomic_storage`). Two such pairings would stall ``bvae sweep resume``:

- the searcher had asked for a trial that the saved trials do not have: the limiter counts it as running, though
  Tune will never run it, so it holds one concurrency slot for good; at ``search.concurrency: 1`` the resumed sweep
  waits forever;
- a trial saved as ended whose end the searcher's state missed: the same held slot, and Optuna never told.

A third pairing does not stall, but miscounts: a saved trial the searcher never asked for runs and is tracked, yet
Optuna never hears of it, and Tune, counting from the older state, creates one trial more than planned.

:class:`SweepSearchGenerator` settles all three when Tune restores it: a lost trial's configuration goes to the next
trial Tune creates (the sweep still runs its planned number of trials, with the values the sampler asked for); an
ended trial is told with its last saved result; a saved trial the searcher has not seen is given to Optuna with its
values, as an asked trial that is told when it ends; and Tune's trial count is that of the saved trials.

A resume also trains errored trials again (``resume_errored``), which the searcher had told FAIL when they errored:
a searcher with ``reopen(trial_id)`` asks their values again as new Optuna trials, told when they end. Fused cohorts'
searcher has no ``register``: a saved cohort trial it never asked for trains and is tracked, untold to Optuna, and its
members' budget is asked again.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from .atomic_storage import newest_experiment_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedTrial:
    """A trial as Tune's newest experiment state saved it."""

    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    last_result: dict[str, Any]
    params: dict[str, Any]  # the values the searcher gave it (Tune's evaluated_params)


def saved_trials(experiment_dir: str, filesystem: pafs.FileSystem | None = None) -> dict[str, SavedTrial] | None:
    """The trials, in the order Tune created them, of the experiment state a resume restores from in
    ``experiment_dir`` (:func:`sweeps.atomic_storage.newest_experiment_state`), or None if none reads."""
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    try:
        found = newest_experiment_state(experiment_dir, filesystem)
        if found is None:
            return None
        trials = {}
        for trial_json, metadata_json in json.loads(found[1])["trial_data"]:
            trial = json.loads(trial_json)  # its fields are read as saved; none of its objects are rebuilt
            last = _loads_with_cloudpickle(metadata_json).get("last_result") or {}
            params = trial.get("evaluated_params") or {}
            trials[str(trial["trial_id"])] = SavedTrial(str(trial["status"]), dict(last), dict(params))
        return trials
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("could not read the saved trials in %s (%s); the searcher is restored as saved",
                       experiment_dir, exc)  # fmt: skip
        return None


class SweepSearchGenerator(SearchGenerator):
    """Tune's ``SearchGenerator`` over a :class:`ConcurrencyLimiter` that, once restored, agrees with the saved
    trials (see the module docstring). The searcher inside may offer ``pending()`` (the trials it asked for and has
    not been told the end of), ``release(trial_id)`` (give that asked trial's configuration to the next trial it is
    asked for), ``knows(trial_id)`` and ``register(trial_id, params)`` (take a trial it never asked for, with those
    values, as asked).

    ``restored_from`` — the sweep's storage folder or URI and its file system, set by the driver before each resume —
    names where Tune restores its trials from; without it, the experiment state Tune copied beside the searcher's
    state is read (on a cluster that copy may sit beside a newer one the killed driver staged and never stored)."""

    restored_from: tuple[str, pafs.FileSystem | None] | None = None

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        trials = self.saved_trials(dirpath)
        if trials is not None:
            for line in self.settle(trials):
                print(f"resume: {line}", file=sys.stderr, flush=True)

    def saved_trials(self, staging_dir: str) -> dict[str, SavedTrial] | None:
        """The trials Tune restores: from ``restored_from`` when the driver said it, else from ``staging_dir``."""
        if self.restored_from is not None:
            return saved_trials(*self.restored_from)
        return saved_trials(staging_dir, pafs.LocalFileSystem())

    def settle(self, trials: dict[str, SavedTrial]) -> list[str]:
        """Make the limiter and searcher agree with ``trials``; one line per trial that needed it."""
        limiter = self.searcher
        if not isinstance(limiter, ConcurrencyLimiter):
            return []
        searcher, said = limiter.searcher, []
        pending = searcher.pending() if callable(getattr(searcher, "pending", None)) else set()
        for trial_id in sorted(set(limiter.live_trials) | set(pending)):
            saved = trials.get(trial_id)
            if saved is None:  # asked for, never saved as a trial: Tune will not run it
                if trial_id in limiter.live_trials:
                    limiter.live_trials.discard(trial_id)
                    limiter.num_unfinished_live_trials = max(0, limiter.num_unfinished_live_trials - 1)
                    limiter.cached_results.pop(trial_id, None)
                if callable(getattr(searcher, "release", None)):
                    searcher.release(trial_id)
                    self._finished = False  # a searcher that ended itself has these to give out again
                said.append(f"trial {trial_id} was asked for but not saved (the driver stopped mid-save); "
                            f"its configuration goes to the next new trial")  # fmt: skip
            elif saved.status == "TERMINATED":  # ended, and its end missed the searcher's (or limiter's) saved state
                if trial_id in limiter.live_trials:
                    limiter.on_trial_complete(trial_id, result=saved.last_result or None)
                else:
                    searcher.on_trial_complete(trial_id, result=saved.last_result or None)
                said.append(f"trial {trial_id} had ended, but the searcher's saved state missed it; told now")
            elif trial_id not in limiter.live_trials:  # Tune runs it again: its end must pass the limiter
                limiter.live_trials.add(trial_id)
                limiter.num_unfinished_live_trials += 1
        for trial_id, saved in trials.items():  # errored: told FAIL then, trained again now (resume_errored; a
            # trial saved as running by an older save than the searcher's, which saw its error, runs again too)
            if saved.status != "TERMINATED" and callable(getattr(searcher, "reopen", None)) and searcher.reopen(trial_id, saved.status):
                if trial_id not in limiter.live_trials:
                    limiter.live_trials.add(trial_id)
                    limiter.num_unfinished_live_trials += 1
                said.append(f"trial {trial_id} had errored and trains again (Optuna gets its outcome as a new trial "
                            f"with its values; the errored one stays FAIL)")  # fmt: skip
        if callable(getattr(searcher, "register", None)):
            for trial_id, saved in trials.items():  # in the order Tune created them: Optuna numbers them so
                if saved.params and not searcher.knows(trial_id):  # created after the searcher's state was saved
                    searcher.register(trial_id, saved.params)
                    if trial_id not in limiter.live_trials:  # so that its end reaches the searcher
                        limiter.live_trials.add(trial_id)
                        limiter.num_unfinished_live_trials += 1
                    if saved.status == "TERMINATED":
                        limiter.on_trial_complete(trial_id, result=saved.last_result or None)
                    said.append(f"trial {trial_id} was saved after the searcher's state; given to it now")
        self._counter = len(trials)  # every trial Tune created is saved: the count a consistent save has
        return said
