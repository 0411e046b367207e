"""Chaos testing: failures injected into trials on purpose, as a sweep on spot machines meets them — the way the
fault-matrix tests (and a user who wants to see recovery work before trusting it) exercise retries and resumes.

Off unless the environment variable ``BVAE_FAULTS`` holds a JSON object, read by each trial process:

- ``raise_at_step`` (int): a selected trial raises :class:`InjectedFault` once it has trained past this step, in an
  attempt that did not start from a checkpoint — so its retry, restored from its last checkpoint, carries on;
- ``fraction`` (float, default 1): the share of trials selected, by a hash of ``seed`` and the trial's parameters
  (not its id, which Ray draws at random), so a sweep with a seeded search loses the same trials every time it runs;
- ``seed`` (int, default 0);
- ``kill_driver_at`` (str): the driver process kills itself (SIGKILL, as a lost machine would) at that moment:
  ``first_report`` (the first result reaches the driver, before it is tracked) or ``final_frontier`` (every
  trial has ended; the final frontier is being published).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass

ENV = "BVAE_FAULTS"


class InjectedFault(RuntimeError):
    """A failure injected by ``BVAE_FAULTS``."""


@dataclass(frozen=True)
class FaultPlan:
    raise_at_step: int | None = None
    fraction: float = 1.0
    seed: int = 0
    kill_driver_at: str | None = None

    def selects(self, key: str) -> bool:
        """Whether the trial known by ``key`` (:func:`trial_key`) is one of the ``fraction`` chosen."""
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction

    def check(self, trial_id: str, params: dict, step: int, restored: bool) -> None:
        """Raise :class:`InjectedFault` if the trial ``trial_id`` with ``params`` is to fail at ``step`` in this
        attempt."""
        if (self.raise_at_step is not None and not restored and step >= self.raise_at_step
                and self.selects(trial_key(params))):  # fmt: skip
            raise InjectedFault(f"{ENV}: trial {trial_id} failed on purpose at step {step}")


def trial_key(params: dict) -> str:
    """A trial's parameters as one canonical string: what selects it, the same in every run of a seeded sweep."""
    return json.dumps(params, sort_keys=True, default=str)


KILL_MOMENTS = ("first_report", "final_frontier")


def kill_driver_if_planned(moment: str) -> None:
    """SIGKILL this (driver) process if ``BVAE_FAULTS`` plans it at ``moment``."""
    plan = fault_plan()
    if plan is not None and plan.kill_driver_at == moment:
        print(f"{ENV}: killing the driver at {moment}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def fault_plan() -> FaultPlan | None:
    """The plan in ``BVAE_FAULTS``, or None when it is unset."""
    text = os.environ.get(ENV)
    if not text:
        return None
    try:
        plan = FaultPlan(**json.loads(text))
        if plan.kill_driver_at not in (None, *KILL_MOMENTS):
            raise ValueError(f"kill_driver_at: expected one of {', '.join(KILL_MOMENTS)}")
        return plan
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{ENV}: expected a JSON object with raise_at_step, fraction, seed; got {text!r} ({exc})") from None
