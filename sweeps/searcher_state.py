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
values, as an asked trial that is told when it ends (a searcher without ``register``, such as fused cohorts', leaves it
untold); and Tune's trial count is that of the saved trials.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from .atomic_storage import EXPERIMENT_STATE_GLOB

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedTrial:
    """A trial as Tune's newest experiment state saved it."""

    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    last_result: dict[str, Any]
    params: dict[str, Any]  # the values the searcher gave it (Tune's evaluated_params)


def saved_trials(folder: str) -> dict[str, SavedTrial] | None:
    """The trials of the newest experiment state in ``folder`` (the one Tune restores from), or None if none reads."""
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    paths = glob.glob(os.path.join(folder, EXPERIMENT_STATE_GLOB))
    if not paths:
        return None
    try:
        with open(max(paths)) as f:  # Tune's own choice: the greatest name is the newest save
            state = json.load(f)
        trials = {}
        for trial_json, metadata_json in state["trial_data"]:
            trial = json.loads(trial_json)  # its fields are read as saved; none of its objects are rebuilt
            last = _loads_with_cloudpickle(metadata_json).get("last_result") or {}
            params = trial.get("evaluated_params") or {}
            trials[str(trial["trial_id"])] = SavedTrial(str(trial["status"]), dict(last), dict(params))
        return trials
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("could not read the saved trials in %s (%s); the searcher is restored as saved", folder, exc)
        return None


class SweepSearchGenerator(SearchGenerator):
    """Tune's ``SearchGenerator`` over a :class:`ConcurrencyLimiter` that, once restored, agrees with the saved
    trials (see the module docstring). The searcher inside may offer ``release(trial_id)`` (give that asked trial's
    configuration to the next trial it is asked for), ``knows(trial_id)`` and ``register(trial_id, params)`` (take a
    trial it never asked for, with those values, as asked)."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        trials = saved_trials(dirpath)  # Tune downloads the experiment state beside the searcher's before this call
        if trials is not None:
            for line in self.settle(trials):
                print(f"resume: {line}", file=sys.stderr, flush=True)

    def settle(self, trials: dict[str, SavedTrial]) -> list[str]:
        """Make the limiter and searcher agree with ``trials``; one line per trial that needed it."""
        limiter = self.searcher
        if not isinstance(limiter, ConcurrencyLimiter):
            return []
        searcher, said = limiter.searcher, []
        for trial_id in sorted(limiter.live_trials):
            saved = trials.get(trial_id)
            if saved is None:  # asked for, never saved as a trial: Tune will not run it
                limiter.live_trials.discard(trial_id)
                limiter.num_unfinished_live_trials = max(0, limiter.num_unfinished_live_trials - 1)
                limiter.cached_results.pop(trial_id, None)
                if callable(getattr(searcher, "release", None)):
                    searcher.release(trial_id)
                said.append(f"trial {trial_id} was asked for but not saved (the driver stopped mid-save); "
                            f"its configuration goes to the next new trial")  # fmt: skip
            elif saved.status == "TERMINATED":  # ended, and its end never reached the searcher's saved state
                limiter.on_trial_complete(trial_id, result=saved.last_result or None)
                said.append(f"trial {trial_id} had ended, but the searcher's saved state missed it; told now")
        if callable(getattr(searcher, "register", None)):
            for trial_id, saved in sorted(trials.items()):
                if saved.params and not searcher.knows(trial_id):  # created after the searcher's state was saved
                    searcher.register(trial_id, saved.params)
                    limiter.live_trials.add(trial_id)  # so that its end reaches the searcher
                    limiter.num_unfinished_live_trials += 1
                    if saved.status == "TERMINATED":
                        limiter.on_trial_complete(trial_id, result=saved.last_result or None)
                    said.append(f"trial {trial_id} was saved after the searcher's state; given to it now")
        self._counter = len(trials)  # every trial Tune created is saved: the count a consistent save has
        return said
