"""β(t) and C(t) schedules: pure functions of the training step, so a resumed run continues exactly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleValue:
    """What the objective uses at one step."""

    beta: float  # weight on KL (for the capacity objective: γ)
    capacity: float | None  # C(t) in nats for the capacity objective, else None
    free_bits: float = 0.0


def linear_ramp(step: int, start: float, end: float, steps: int) -> float:
    """Linear interpolation from ``start`` at step 0 to ``end`` at ``steps``, constant afterwards."""
    frac = min(max(step, 0) / steps, 1.0)
    return start + (end - start) * frac


def schedule_value(schedule, beta: float, step: int) -> ScheduleValue:
    """Evaluate a schedule config (see :mod:`bvae_core.config`) at ``step``."""
    kind = schedule.kind
    if kind == "constant":
        return ScheduleValue(beta=beta, capacity=None)
    if kind == "linear_capacity":
        # Burgess et al. 2018, §3 and §A.2: C increased linearly from 0 to c_max over ramp_steps.
        return ScheduleValue(beta=schedule.gamma, capacity=linear_ramp(step, 0.0, schedule.c_max, schedule.ramp_steps))
    if kind == "warmup":
        return ScheduleValue(beta=linear_ramp(step, schedule.beta_start, beta, schedule.warmup_steps), capacity=None)
    if kind == "free_bits":
        return ScheduleValue(beta=beta, capacity=None, free_bits=schedule.free_bits)
    raise ValueError(f"objective.schedule.kind: unknown schedule {kind!r}")
