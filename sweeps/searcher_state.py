"""A resumed sweep's searcher, made to agree with the trials Tune saved.

Tune saves a sweep as separate files — its trials (``experiment_state-*.json``), the search generator and concurrency
limiter (``search_gen_state-*.json``), the searcher itself (``searcher-state-*.pkl``) — and a background thread copies
them to storage one by one. A driver killed during that copy can leave files of two different saves side by side
(each of them whole: :mod:`sweeps.atomic_storage`). Two such pairings would stall ``bvae sweep resume``:

- the searcher had asked for a trial that the saved trials do not have: the limiter counts it as running, though
  Tune will never run it, so it holds one concurrency slot for good; at ``search.concurrency: 1`` the resumed sweep
  waits forever;
- a trial saved as ended whose end the searcher's state missed: the same held slot, and Optuna never told.

:class:`SweepSearchGenerator` settles both when Tune restores it: a lost trial's configuration goes to the next trial
Tune creates (the sweep still runs its planned number of trials, with the values the sampler asked for), and an ended
trial is told with its last saved result. The opposite pairing — a saved trial the searcher never asked for — is left:
that trial runs and is tracked, but Optuna does not count it.
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
            trials[str(trial["trial_id"])] = SavedTrial(str(trial["status"]), dict(last))
        return trials
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("could not read the saved trials in %s (%s); the searcher is restored as saved", folder, exc)
        return None


class SweepSearchGenerator(SearchGenerator):
    """Tune's ``SearchGenerator`` over a :class:`ConcurrencyLimiter` that, once restored, agrees with the saved
    trials (see the module docstring). The searcher inside may offer ``release(trial_id)``: give that asked trial's
    configuration to the next trial it is asked for."""

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
        said = []
        for trial_id in sorted(limiter.live_trials):
            saved = trials.get(trial_id)
            if saved is None:  # asked for, never saved as a trial: Tune will not run it
                limiter.live_trials.discard(trial_id)
                limiter.num_unfinished_live_trials = max(0, limiter.num_unfinished_live_trials - 1)
                limiter.cached_results.pop(trial_id, None)
                self._counter = max(0, self._counter - 1)  # the trial that takes its place counts instead
                release = getattr(limiter.searcher, "release", None)
                if callable(release):
                    release(trial_id)
                said.append(f"trial {trial_id} was asked for but not saved (the driver stopped mid-save); "
                            f"its configuration goes to the next new trial")  # fmt: skip
            elif saved.status == "TERMINATED":  # ended, and its end never reached the searcher's saved state
                limiter.on_trial_complete(trial_id, result=saved.last_result or None)
                said.append(f"trial {trial_id} had ended, but the searcher's saved state missed it; told now")
        return said
