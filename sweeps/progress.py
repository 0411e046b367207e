"""What a user watches during a sweep: one line per evaluation and per finished trial, and a summary table."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.tune import Callback

from .search import DONE_KEY


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    step: int = 0
    rate: float = math.nan
    distortion: float = math.nan
    status: str = "RUNNING"


def trial_status(result: dict[str, Any] | None, error: bool = False) -> str:
    """COMPLETED, PRUNED (stopped early by the scheduler), FAILED (non-finite metric) or ERROR."""
    if error:
        return "ERROR"
    if not result:
        return "PRUNED"
    rate, distortion = result.get("rate"), result.get("distortion")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rate, distortion)):
        return "FAILED"
    return "COMPLETED" if result.get(DONE_KEY) else "PRUNED"


class SweepProgress(Callback):
    """Prints progress lines on stderr; keeps a row per trial for the summary."""

    def __init__(self, total_trials: int, total_steps: int, stream: TextIO | None = None):
        self.total_trials, self.total_steps = total_trials, total_steps
        self.rows: dict[str, TrialRow] = {}
        self._stream = stream
        self._started = time.monotonic()

    def __getstate__(self) -> dict:  # pickled into Tune's experiment state: no stream
        state = self.__dict__.copy()
        state["_stream"] = None
        return state

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _line(self, row: TrialRow) -> str:
        params = "  ".join(f"{k.rsplit('.', 1)[-1] if k.count('.') == 1 else k.split('.', 1)[1]}={_short(v)}"
                           for k, v in row.params.items())  # fmt: skip
        elapsed = time.monotonic() - self._started
        return (f"[{elapsed:7.1f}s] trial {row.trial_id}  {params}  step {row.step}/{self.total_steps}  "
                f"rate {row.rate:.3f}  distortion {row.distortion:.3f}  {row.status}")  # fmt: skip

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config)))
        row.status = "RUNNING"
        print(f"[{time.monotonic() - self._started:7.1f}s] trial {trial.trial_id} started "
              f"({len(self.rows)}/{self.total_trials})", file=self.stream, flush=True)  # fmt: skip

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config)))
        row.step = int(result.get("step", 0))
        row.rate, row.distortion = result.get("rate", math.nan), result.get("distortion", math.nan)
        print(self._line(row), file=self.stream, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, trial_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "ERROR")

    def _finish(self, trial, status: str) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialRow(trial.trial_id, dict(trial.config)))
        row.status = status
        print(self._line(row), file=self.stream, flush=True)


def summary_table(rows: list[TrialRow]) -> str:
    """A plain-text table of every trial: parameters, rate, distortion, status."""
    if not rows:
        return "(no trials)"
    keys = sorted({k for r in rows for k in r.params}, key=lambda k: (k.count("."), k))
    header = ["trial", *keys, "rate", "distortion", "status"]
    body = [[r.trial_id, *(_short(r.params.get(k, "")) for k in keys), f"{r.rate:.3f}", f"{r.distortion:.3f}", r.status]
            for r in sorted(rows, key=lambda r: r.trial_id)]  # fmt: skip
    return format_table(header, body)


def format_table(header: list[str], body: list[list]) -> str:
    """Left-aligned plain-text columns with a rule under the header."""
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])
