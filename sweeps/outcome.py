"""How a trial ended — decided here, once, and asked by everything that shows or records it: the progress lines
and summary table (:mod:`sweeps.progress`), the trial's MLflow run (:mod:`sweeps.tracking`), and Optuna
(:mod:`sweeps.search`). No Ray, Optuna or MLflow import: the answer is data.

| last result | outcome | progress | ``bvae.status`` | MLflow run | Optuna |
|---|---|---|---|---|---|
| the trial raised | error | ERROR | ``error`` | FAILED | FAIL |
| none (the trial ended without reporting) | failed | FAILED | ``failed`` | FAILED | FAIL |
| an objective missing or not finite | failed | FAILED | ``failed`` | FAILED | FAIL |
| finite, training not finished (a scheduler stopped it) | pruned | PRUNED | ``pruned`` | KILLED | PRUNED |
| finite, trained to the end | completed | COMPLETED | ``completed`` | FINISHED | COMPLETE |
| cut off by Ctrl+C / ``stop`` (not ended by Tune) | interrupted | INTERRUPTED | ``interrupted`` | KILLED | RUNNING (a resume continues it) |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Set by the trainable on the report after its last training step: the trial ran to the end.
DONE_KEY = "done_training"

#: A one-line notice a trial reports once (e.g. "checkpoint … is unreadable; restored from …"): shown and tagged.
NOTICE_KEY = "notice"

#: The objectives every trial reports (a frontier point needs both).
POINT_METRICS = ("rate", "distortion")


@dataclass(frozen=True)
class Outcome:
    """One way a trial can end, as each consumer names it."""

    label: str  # progress lines and the summary table
    status_tag: str  # the run's ``bvae.status`` tag
    run_status: str  # the MLflow run status (mlflow.entities.RunStatus name)
    optuna_state: str  # the optuna.trial.TrialState name the study is told
    reason: str = ""  # why, for a trial that did not complete

    @property
    def completed(self) -> bool:
        return self.label == "COMPLETED"


COMPLETED = Outcome("COMPLETED", "completed", "FINISHED", "COMPLETE")
PRUNED = Outcome("PRUNED", "pruned", "KILLED", "PRUNED", "stopped early by the scheduler")
FAILED = Outcome("FAILED", "failed", "FAILED", "FAIL")
ERROR = Outcome("ERROR", "error", "FAILED", "FAIL")
INTERRUPTED = Outcome("INTERRUPTED", "interrupted", "KILLED", "RUNNING", "cut off; bvae sweep resume continues it")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_outcome(result: Mapping[str, Any] | None, error: bool = False,
                  objectives: Iterable[str] = POINT_METRICS) -> Outcome:  # fmt: skip
    """How a trial ended, from its last result and whether it raised.

    ``objectives`` are the metrics that must be finite besides rate and distortion (a sweep's
    ``search.objectives``)."""
    if error:
        return ERROR
    if not result:
        return Outcome(**{**FAILED.__dict__, "reason": "ended without reporting a result"})
    for name in dict.fromkeys([*POINT_METRICS, *objectives]):
        if not _finite_number(result.get(name)):
            message = result.get("error") or f"{name} is {'missing' if name not in result else result.get(name)}"
            return Outcome(**{**FAILED.__dict__, "reason": str(message)})
    return COMPLETED if result.get(DONE_KEY) else PRUNED


def error_line(trial: Any) -> str:
    """The last line of a trial's error (Tune writes it to ``error.txt`` in the trial's folder)."""
    path = getattr(trial, "error_file", None)
    try:
        text = open(path, encoding="utf-8", errors="replace").read() if path else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "the trial raised (see its log)"
