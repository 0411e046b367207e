"""β(t) and C(t) schedules: pure functions of the training step, so a resumed run continues exactly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleValue:
    """What the objective uses at one step."""

    beta: float  # weight on KL (for the capacity objective: γ)
    capacity: float | None  # C(t) in nats for the capacity objective, else None
    free_bits: float = 0.0
    multiplier_lr: float = 0.0  # capacity objective: step of the multiplier λ per nat of KL − C (see objectives)


def linear_ramp(step: int, start: float, end: float, steps: int) -> float:
    """Linear interpolation from ``start`` at step 0 to ``end`` at ``steps``, constant afterwards."""
    frac = min(max(step, 0) / steps, 1.0)
    return start + (end - start) * frac


def schedule_value(schedule, beta: float, step: int) -> ScheduleValue:
    """Evaluate a schedule config (a :class:`bvae_core.config.ScheduleConfig`, where each kind says what it
    computes) at ``step``."""
    return schedule.value(beta, step)
