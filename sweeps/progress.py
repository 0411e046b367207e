"""What a user watches during a sweep: one line per evaluation and per finished trial — with the sweep's count of
trials done, running and pending and an ETA — and a summary table at the end."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ray.tune import Callback

from .outcome import error_line, trial_outcome
from .tables import format_table


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    step: int = 0
    steps: int = 0  # the steps it trains for (train.steps may be searched)
    rate: float = math.nan
    distortion: float = math.nan
    status: str = "RUNNING"


def _param_label(key: str) -> str:
    """A searched key as the progress line shows it: ``objective.beta`` → ``beta``,
    ``objective.schedule.c_max`` → ``schedule.c_max``, a top-level ``seed`` as itself."""
    _, dot, rest = key.partition(".")
    return rest if dot else key


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class SweepProgress(Callback):
    """Prints progress lines on stderr; keeps a row per trial for the summary.

    ``show_params`` maps a trial's sampled parameters to those worth showing (by default all of them; the runner
    drops what the trial's objective does not use); ``trial_steps`` to the steps that trial trains for (by default
    ``total_steps``, the base config's: the runner reads a searched ``train.steps``)."""

    def __init__(self, total_trials: int, total_steps: int, stream: TextIO | None = None,
                 show_params: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 trial_steps: Callable[[dict[str, Any]], int] | None = None):  # fmt: skip
        self.total_trials, self.total_steps = total_trials, total_steps
        self._trial_steps = trial_steps
        self.rows: dict[str, TrialRow] = {}
        self._ended_before: set[str] | None = None  # trials that had ended before this driver (a resume); None: unread
        self._told_failures: set[tuple[str, str, int]] = set()  # (event, trial or cohort, failure count) shown
        self._stream = stream
        self._show_params = show_params
        self._started = time.monotonic()
        self._training_since: float | None = None  # the first trial's start in this driver: the pace counts from it

    def __getstate__(self) -> dict:  # pickled into Tune's experiment state: no stream
        state = self.__dict__.copy()
        state["_stream"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_ended_before": None, "_trial_steps": None, **state, "_told_failures": set()})
        self._started = time.monotonic()  # a resumed driver measures its own pace
        self._training_since = None

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _params(self, config: dict[str, Any]) -> dict[str, Any]:
        if self._show_params is None:
            return dict(config)
        try:
            return self._show_params(dict(config))
        except Exception:  # noqa: BLE001 - a display filter never stops a sweep; show everything instead
            return dict(config)

    def _steps(self, config: dict[str, Any]) -> int:
        if self._trial_steps is None:
            return self.total_steps
        try:
            return int(self._trial_steps(dict(config)))
        except Exception:  # noqa: BLE001 - a display figure never stops a sweep; the base config's steps instead
            return self.total_steps

    def _planned(self, row: TrialRow) -> int:
        return row.steps or self.total_steps  # a row saved by an older driver has none of its own

    def _row(self, trial) -> TrialRow:
        row = self.rows.get(trial.trial_id)
        if row is None:
            row = self.rows[trial.trial_id] = TrialRow(trial.trial_id, self._params(trial.config),
                                                       steps=self._steps(trial.config))  # fmt: skip
        return row

    # -- the sweep's state --------------------------------------------------------------------------------------
    def counts(self) -> tuple[int, int, int]:
        """(done, running, pending) trials."""
        done = sum(r.status != "RUNNING" for r in self.rows.values())
        running = len(self.rows) - done
        return done, running, max(0, self.total_trials - len(self.rows))

    def eta_seconds(self) -> float | None:
        """Seconds left at the pace so far (training steps per second over all trials), or None before any step.
        A running trial has its own ``train.steps`` left to train, an ended one (completed, stopped, failed) none,
        and a trial not started yet the mean steps of those started."""
        if self._training_since is None:
            return None
        elapsed = time.monotonic() - self._training_since  # not Ray's start-up: it made the first ETAs 2–4× long
        before = self._ended_before or set()  # trained before this driver: not part of its pace
        mine = [r for r in self.rows.values() if r.trial_id not in before]
        work = sum(r.step for r in mine)  # what was trained: a member stopped at step 2 trained 2 steps, not all
        if work <= 0 or elapsed <= 0:
            return None
        started = [self._planned(r) for r in self.rows.values()]
        pending = max(0, self.total_trials - len(self.rows))
        left = sum(max(0, self._planned(r) - r.step) for r in mine if r.status == "RUNNING")
        left += pending * (sum(started) / len(started))
        return left / (work / elapsed)

    def _state(self) -> str:
        done, running, pending = self.counts()
        eta = self.eta_seconds()
        return (f"{done}/{self.total_trials} done, {running} running, {pending} pending"
                + (f", ETA {_duration(eta)}" if eta is not None and done < self.total_trials else ""))  # fmt: skip

    def _line(self, row: TrialRow) -> str:
        params = "  ".join(f"{_param_label(k)}={_short(v)}" for k, v in row.params.items())
        elapsed = time.monotonic() - self._started
        return (f"[{elapsed:7.1f}s] trial {row.trial_id}  {params}  step {row.step}/{self._planned(row)}  "
                f"rate {row.rate:.3f}  distortion {row.distortion:.3f}  {row.status}  | {self._state()}")  # fmt: skip

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @staticmethod
    def _fill(row: TrialRow, result: dict[str, Any] | None) -> None:
        if result:
            row.step = int(result.get("step", row.step))
            row.rate, row.distortion = result.get("rate", row.rate), result.get("distortion", row.distortion)

    # -- Tune hooks ---------------------------------------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info):
        """Once, at the first step: count the trials that ended before this driver (a resumed sweep's), quietly."""
        if self._ended_before is not None:
            return
        self._ended_before = set()
        for trial in trials:
            if trial.trial_id in self.rows or trial.status not in ("TERMINATED", "ERROR"):
                continue
            row = self._row(trial)
            self._fill(row, trial.last_result)
            row.status = "ERROR" if trial.status == "ERROR" else trial_outcome(trial.last_result).label
            self._ended_before.add(trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        (self._ended_before or set()).discard(trial.trial_id)  # an errored trial a resume trains again
        if self._training_since is None:
            self._training_since = time.monotonic()
        row = self._row(trial)
        row.status = "RUNNING"
        self._print(f"[{time.monotonic() - self._started:7.1f}s] trial {trial.trial_id} started  | {self._state()}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row.step = int(result.get("step", 0))
        row.rate, row.distortion = result.get("rate", math.nan), result.get("distortion", math.nan)
        self._print(self._line(row))

    def on_trial_complete(self, iteration, trials, trial, **info):
        outcome = trial_outcome(trial.last_result)
        self._finish(trial, outcome.label, outcome.reason if outcome.label == "FAILED" else "")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "ERROR")
        if self._first_word_on(trial, "error"):  # once for a cohort: its members share the error
            self._print(f"    {self._failing(trial)} errored: {error_line(trial)[:300]}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial that raised and is retried from its last checkpoint (``search.max_failures``): one line, in place
        of Ray's traceback (``BVAE_DEBUG=1`` shows it)."""
        if self._first_word_on(trial, "retry"):
            retry = getattr(trial, "num_failures", 0)
            self._print(f"[{time.monotonic() - self._started:7.1f}s] trial {self._failing(trial)} errored; retried "
                        f"from its last checkpoint (retry {retry}): {error_line(trial)[:300]}")  # fmt: skip

    @staticmethod
    def _failing(trial) -> str:
        """What raised: the trial, or for a cohort member the cohort's trial (``… (cohort)``)."""
        cohort = getattr(trial, "cohort", None)
        return f"{cohort} (cohort)" if cohort else trial.trial_id

    def _first_word_on(self, trial, event: str) -> bool:
        """Whether this failure of ``trial`` (for a member: of its cohort) has not been told yet by ``event``."""
        key = (event, getattr(trial, "cohort", None) or trial.trial_id, getattr(trial, "num_failures", 0))
        if key in self._told_failures:
            return False
        self._told_failures.add(key)
        return True

    def _finish(self, trial, status: str, reason: str = "") -> None:
        row = self._row(trial)
        self._fill(row, trial.last_result)  # (a member stopped before a resume has had no result in this driver)
        row.status = status
        line = self._line(row)
        if reason:  # why it failed, on the line a user reads (its run carries it as bvae.reason too)
            line += f"\n    {trial.trial_id} failed: {reason.splitlines()[0][:300]}"
        self._print(line)


def summary_table(rows: list[TrialRow]) -> str:
    """A plain-text table of every trial: parameters, rate, distortion, status."""
    if not rows:
        return "(no trials)"
    keys = sorted({k for r in rows for k in r.params}, key=lambda k: (k.count("."), k))
    header = ["trial", *keys, "rate", "distortion", "status"]
    body = [[r.trial_id, *(_short(r.params.get(k, "")) for k in keys), f"{r.rate:.3f}", f"{r.distortion:.3f}", r.status]
            for r in sorted(rows, key=lambda r: r.trial_id)]  # fmt: skip
    return format_table(header, body)
