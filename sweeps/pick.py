"""Pick β from the frontier: ``knee``, ``max-rate=R``, ``max-distortion=D``, ``max-METRIC`` (e.g. ``max-mig``,
optionally bounded by a maximum distortion). The pick is always a frontier point."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .frontier import frontier_of


class PickError(ValueError):
    """No frontier point satisfies the rule; the message names the closest one."""


@dataclass(frozen=True)
class Rule:
    kind: str  # knee | max-rate | max-distortion | max-metric
    value: float | None = None
    metric: str | None = None


#: The frontier columns ``max-METRIC`` may maximise: scores where higher is better (the disentanglement metrics,
#: active units, the mutual information I(x; z)). Others (nelbo, distortion, seed, pareto_rank, …) would pick the
#: worst or an arbitrary point.
HIGHER_IS_BETTER = ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness", "factorvae_score",
                    "betavae_score", "active_units", "mutual_info")  # fmt: skip


def parse_rule(text: str) -> Rule:
    """``knee`` | ``max-rate=R`` | ``max-distortion=D`` | ``max-METRIC`` (a score of :data:`HIGHER_IS_BETTER`,
    e.g. ``max-mig``)."""
    if text == "knee":
        return Rule("knee")
    match = re.fullmatch(r"(max-rate|max-distortion)=(.+)", text)
    if match:
        try:
            value = float(match.group(2))
        except ValueError:
            raise PickError(f"--rule {text}: expected a number after '=', got {match.group(2)!r}") from None
        if not math.isfinite(value):
            raise PickError(f"--rule {text}: expected a finite number")
        return Rule(match.group(1), value)
    match = re.fullmatch(r"max-([A-Za-z][\w/.-]*)", text)
    if match and match.group(1) not in ("rate", "distortion"):
        metric = match.group(1).replace("/", "_")
        if metric not in HIGHER_IS_BETTER:
            raise PickError(f"--rule {text}: max-METRIC maximises a score where higher is better, one of "
                            f"{', '.join(HIGHER_IS_BETTER)}; got {metric!r}")  # fmt: skip
        return Rule("max-metric", metric=metric)
    raise PickError(f"--rule: expected knee, max-rate=R, max-distortion=D or max-METRIC (e.g. max-mig), got {text!r}")


def check_max_distortion(rule: Rule, rule_text: str, max_distortion: float | None) -> None:
    """``--max-distortion D`` bounds only the max-METRIC rules (the others fix the distortion or trade it off)."""
    if max_distortion is None:
        return
    if rule.kind != "max-metric":
        raise PickError(f"--max-distortion: applies only to the max-METRIC rules (got --rule {rule_text})")
    if not math.isfinite(max_distortion):
        raise PickError(f"--max-distortion: expected a finite number, got {max_distortion}")


def knee(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The frontier point farthest *below* the chord between its two ends, in coordinates normalised to [0, 1] by the
    frontier's range (the "Kneedle" construction, Satopää et al. 2011: the knee of a decreasing convex curve is where
    it falls farthest under the straight line between its ends). A point above the chord is a poor trade-off, never
    the knee. With fewer than three points, or none below the chord (no knee): the lowest rate (see
    :func:`no_knee_reason`)."""
    return knee_with_reason(points)[0]


def no_knee_reason(points: list[dict[str, Any]]) -> str | None:
    """Why the frontier has no knee (then :func:`knee` falls back to its lowest rate), or None when it has one."""
    return knee_with_reason(points)[1]


def knee_with_reason(points: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    front = sorted(points, key=lambda p: p["rate"])
    if len(front) < 3:
        return front[0], (f"the frontier has {len(front)} point{'s' if len(front) > 1 else ''}, too few for a knee "
                          f"(3 or more); picked its lowest rate")  # fmt: skip
    xy = np.array([[p["rate"], p["distortion"]] for p in front], dtype=float)
    span = np.where(np.ptp(xy, axis=0) > 0, np.ptp(xy, axis=0), 1.0)
    norm = (xy - xy.min(0)) / span
    a, b = norm[0], norm[-1]
    chord = (b - a) / np.linalg.norm(b - a)
    rel = norm - a
    below = rel[:, 0] * chord[1] - rel[:, 1] * chord[0]  # signed: > 0 under the chord (rate up, distortion down)
    best = int(np.argmax(below))
    if below[best] > 0:
        return front[best], None
    return front[0], "no frontier point lies below the chord between its ends (no knee); picked its lowest rate"


def collapse_note(row: dict[str, Any]) -> str | None:
    """A line when the picked point has no active latent unit: its posterior collapsed onto the prior, so its codes
    carry (almost) nothing — rarely what a pick is for."""
    if row.get("active_units") != 0:
        return None
    return (f"trial {row['trial_id']} has no active latent unit (rate {row['rate']:.3g} nats): its posterior has "
            f"collapsed onto the prior and its codes carry almost nothing; a rule that allows more rate (e.g. "
            f"max-rate=R) picks a model that encodes")


def _describe(p: dict[str, Any]) -> str:
    beta = f"β={p['beta']:.4g}, " if p.get("beta") is not None else ""
    return f"trial {p['trial_id']} ({beta}rate {p['rate']:.4g}, distortion {p['distortion']:.4g})"


def apply_rule(rows: list[dict[str, Any]], rule: Rule, max_distortion: float | None = None) -> dict[str, Any]:
    """The frontier point the rule picks; :class:`PickError` (naming the closest point) when none satisfies it."""
    front = frontier_of(rows)
    if not front:
        raise PickError("the sweep has no completed trial with a finite rate and distortion yet")
    if rule.kind == "knee":
        return knee(front)
    if rule.kind == "max-rate":
        ok = [p for p in front if p["rate"] <= rule.value]
        if not ok:
            closest = min(front, key=lambda p: p["rate"])
            raise PickError(f"no frontier point has rate ≤ {rule.value:g}; the closest is {_describe(closest)}")
        return min(ok, key=lambda p: p["distortion"])
    if rule.kind == "max-distortion":
        ok = [p for p in front if p["distortion"] <= rule.value]
        if not ok:
            closest = min(front, key=lambda p: p["distortion"])
            raise PickError(f"no frontier point has distortion ≤ {rule.value:g}; the closest is {_describe(closest)}")
        return min(ok, key=lambda p: p["rate"])
    # max-METRIC over the frontier, optionally with distortion ≤ max_distortion
    scored = [p for p in front if p.get(rule.metric) is not None]
    if not scored:
        raise PickError(f"no frontier point has the metric {rule.metric!r} (computed metrics appear as columns of "
                        f"`bvae frontier`; add it to eval.metrics of the spec)")  # fmt: skip
    if max_distortion is not None:
        bounded = [p for p in scored if p["distortion"] <= max_distortion]
        if not bounded:
            closest = min(scored, key=lambda p: p["distortion"])
            raise PickError(f"no frontier point with {rule.metric} has distortion ≤ {max_distortion:g}; the closest "
                            f"is {_describe(closest)}")  # fmt: skip
        scored = bounded
    return max(scored, key=lambda p: p[rule.metric])


def pick_summary(row: dict[str, Any], rule_text: str) -> dict[str, Any]:
    """The JSON object ``bvae pick --json`` prints: ``params`` the trial's hyperparameters, ``eval_params`` the
    disentanglement metrics' settings (logged as ``eval.*`` params)."""
    logged = row.get("params") or {}
    metrics = {k: v for k, v in row.items() if k in ("rate", "distortion", "nelbo", "active_units", "sse", "mig", "sap",
               "dci_disentanglement", "dci_completeness", "dci_informativeness", "factorvae_score", "betavae_score")
               and v is not None}  # fmt: skip
    return {
        "rule": rule_text,
        "sweep": row["sweep"],
        "trial_id": row["trial_id"],
        "run_id": row["run_id"],
        "beta": row.get("beta"),
        "latent_dim": row.get("latent_dim"),
        "schedule": row.get("schedule"),
        "c_max": row.get("c_max"),
        "rate": row["rate"],
        "distortion": row["distortion"],
        "pareto_rank": row.get("pareto_rank"),
        "params": {k: v for k, v in logged.items() if not k.startswith("eval.")},
        "eval_params": {k.removeprefix("eval."): v for k, v in logged.items() if k.startswith("eval.")},
        "metrics": metrics,
        "checkpoint_uri": row.get("checkpoint_uri"),
    }
