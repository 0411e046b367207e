"""Early stopping for the members of fused cohorts (``search.cohort`` > 1 with ``search.scheduler``).

Ray Tune's schedulers act on Ray trials, and a cohort trial is K members: stopping it would stop them all. Each
member is instead judged on its own by asynchronous successive halving (ASHA; Li et al., "A System for Massively
Parallel Hyperparameter Tuning", MLSys 2020) — the same rungs and cutoffs as Tune's ``ASHAScheduler`` gives a trial
of a sweep without cohorts, at evaluation granularity: at rung r (``grace_period · reduction_factor^k``
evaluations) a member whose metric is worse than the ``1 − 1/reduction_factor`` quantile of the members recorded at
that rung so far is stopped. A stopped member stops updating (:meth:`bvae_core.cohort.Cohort.stop`), keeps its
checkpoint as of that evaluation and ends PRUNED, as a stopped trial does.

The rungs live in one Ray actor per sweep (:class:`MemberRungs`, named :func:`actor_name`, on the driver's node) that
every cohort trial asks, wherever it runs; it remembers each decision, so an evaluation run again after a retry gets
the same answer. The driver's searcher keeps a copy of what was recorded and decided (it sees every result: a member
stopped at an evaluation says so in that result) in its own saved state, and seeds a new actor from it on
``bvae sweep resume``.
"""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a cohort trial waits for the rungs actor (created by the driver's searcher) before it trains on unjudged.
ACTOR_WAIT_S = 60.0


def actor_name(sweep_key: str) -> str:
    return f"bvae-member-rungs-{sweep_key}"


def evaluations(steps: int, eval_every: int) -> int:
    """The evaluations a member reports when trained to the end (the scheduler's ``max_t``)."""
    return math.ceil(steps / eval_every)


def evaluation_index(step: float, eval_every: int) -> int:
    """The evaluation a member's result at ``step`` is (1, 2, …; the last one may fall on a partial interval)."""
    return math.ceil(float(step) / eval_every)


class MemberRungs:
    """ASHA's rung records for members (one bracket, as ``ASHAScheduler(brackets=1)``), keyed by member id, and
    every decision taken: a member whose evaluation runs again (its trial retried from an earlier checkpoint) gets
    the same answer, not a second judgement against a rung that already holds it."""

    def __init__(self, metric: str, mode: str, grace_period: int, reduction_factor: float, max_evaluations: int):
        # Tune's own ASHA bookkeeping (private, pinned with Ray in requirements.txt): the cutoffs a trial gets
        from ray.tune.schedulers.async_hyperband import _Bracket

        self.metric, self.sign = metric, (-1.0 if mode == "min" else 1.0)  # rewards are maximised, as in Tune
        self.max_t = max_evaluations
        self._bracket = _Bracket(min_t=min(grace_period, max_evaluations), max_t=max_evaluations,
                                 reduction_factor=reduction_factor, s=0)  # fmt: skip
        self._decisions: dict[tuple[str, int], bool] = {}

    def decide(self, member: str, evaluation: int, value: float) -> bool:
        """Record member ``member``'s metric at its ``evaluation``-th evaluation; True: stop it now."""
        from ray.tune.schedulers import TrialScheduler

        if (member, evaluation) in self._decisions:
            return self._decisions[(member, evaluation)]
        if evaluation >= self.max_t or not math.isfinite(value):
            return False  # trained to the end, or about to be marked FAIL: nothing to decide
        action = self._bracket.on_result(SimpleNamespace(trial_id=member), evaluation, self.sign * value)
        self._decisions[(member, evaluation)] = stop = action == TrialScheduler.STOP
        return stop

    def replay(self, records: list[tuple[str, int, float, bool]]) -> None:
        """Restore what was recorded and decided before a resume (member, evaluation, value, stopped): the rungs get
        the values, and each decision is kept as it was taken."""
        for member, evaluation, value, stopped in records:
            self.decide(member, evaluation, value)
            self._decisions[(member, evaluation)] = bool(stopped)

    def cutoffs(self) -> dict[int, float | None]:
        """Each rung's current cutoff (as the metric, not the reward): for tests and debugging."""
        return {int(milestone): (None if (c := self._bracket.cutoff(recorded)) is None else float(self.sign * c))
                for milestone, recorded in self._bracket._rungs}  # fmt: skip


def start_rungs_actor(name: str, settings: Any, max_evaluations: int, records: list[tuple[str, int, float, bool]]) -> Any:
    """The sweep's rungs actor, created (or found, if a previous driver's is still alive) and seeded with ``records``.
    It lives on the driver's node — it goes when the driver goes, never with a worker that dies — and needs no CPU:
    it must never hold a slot a trial waits for."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(MemberRungs).options(name=name, get_if_exists=True, num_cpus=0, scheduling_strategy=here).remote(
        settings.metric, settings.mode, settings.grace_period, settings.reduction_factor, max_evaluations)  # fmt: skip
    if records:
        ray.get(actor.replay.remote(list(records)))
    return actor


class MemberJudge:
    """The cohort trial's side: asks the sweep's rungs actor whether a member stops. If the actor cannot be reached
    (it is created by the driver, which a resumed sweep does first), the members train on unjudged: one warning."""

    def __init__(self, name: str, metric: str):
        self.name, self.metric = name, metric
        self._actor: Any = None
        self._unreachable = False

    def _find(self) -> Any:
        import ray

        deadline = time.monotonic() + ACTOR_WAIT_S
        while True:
            try:
                return ray.get_actor(self.name)
            except ValueError:  # not created yet (a resumed driver restores the searcher first): wait a little
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def should_stop(self, member: str, evaluation: int, metrics: dict[str, Any]) -> bool:
        import ray

        value = metrics.get(self.metric)
        if self._unreachable or not isinstance(value, (int, float)):
            return False
        try:
            if self._actor is None:
                self._actor = self._find()
            return bool(ray.get(self._actor.decide.remote(member, evaluation, float(value)), timeout=ACTOR_WAIT_S))
        except Exception as exc:  # noqa: BLE001 - a scheduler that cannot be reached must not fail the training
            logger.warning("member scheduler %s unreachable (%s); this cohort's members train on unjudged", self.name,
                           exc)  # fmt: skip
            self._unreachable = True
            return False
