"""The empirical rate-distortion frontier of a sweep: collected from the tracking store (so it works from any machine
that reaches the tracking server), Pareto ranks, 2-D hypervolume against a reference point fixed per sweep, and the
frontier table (docs/contracts.md) as Parquet."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bvae_core.atomic import write_atomically

from .store import TABLE_METRICS, TAG_CONFIG, TAG_ON_FRONTIER, TAG_STATUS, TAG_TRIAL_ID, SweepNotFound, SweepRef, child_runs
from .store import find_sweep  # noqa: F401 - the CLI and tests find sweeps here too

#: Default reference rate for the hypervolume when the spec gives none: 50 nats, the largest capacity Burgess et al.
#: 2018 (§A.2) train to. It does not move with the results, so hypervolumes of one sweep compare over time.
DEFAULT_REFERENCE_RATE = 50.0

#: Frontier table columns (docs/contracts.md), in order; optional metric columns follow when present.
COLUMNS = ["sweep", "trial_id", "run_id", "beta", "latent_dim", "schedule", "c_max", "gamma", "seed", "rate",
           "distortion", "nelbo", "active_units", "on_frontier", "pareto_rank", "checkpoint_uri"]  # fmt: skip
OPTIONAL_METRICS = list(TABLE_METRICS)
CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"


class FrontierError(SweepNotFound):
    """The sweep or its points cannot be found; the message says what was looked for."""


# ---------------------------------------------------------------- Pareto ranks and hypervolume
def pareto_ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting (Deb et al. 2002) for minimisation of every column: rank 0 is the Pareto front, rank 1
    the front of the rest, and so on. ``points [n, m]`` → ``int [n]``. Equal points share a rank."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    le = (points[:, None, :] <= points[None, :, :]).all(-1)
    lt = (points[:, None, :] < points[None, :, :]).any(-1)
    dominates = le & lt  # dominates[i, j]: i dominates j
    remaining = np.ones(n, dtype=bool)
    rank = 0
    while remaining.any():
        dominated = (dominates[remaining][:, remaining]).any(0)
        front = np.flatnonzero(remaining)[~dominated]
        ranks[front] = rank
        remaining[front] = False
        rank += 1
    return ranks


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by ``points [n, 2]`` (both minimised) and bounded by ``reference`` (Zitzler & Thiele 1998).
    Points not strictly better than the reference in both coordinates contribute nothing."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts[:, 0] < reference[0]) & (pts[:, 1] < reference[1])]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    area, best_y = 0.0, reference[1]
    for x, y in pts:  # by increasing rate: each point improving on the best distortion so far adds a slab
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return float(area)


# ---------------------------------------------------------------- the table
def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def collect_rows(client, ref: SweepRef) -> list[dict[str, Any]]:
    """One row per trial with a finite rate and distortion (completed or stopped early), from the child runs."""
    rows = []
    for run in child_runs(client, ref.parent_run_id):
        metrics, tags = run.data.metrics, run.data.tags
        rate, distortion = _float(metrics.get("rate")), _float(metrics.get("distortion"))
        if rate is None or distortion is None:
            continue
        status = tags.get(TAG_STATUS, "")
        row = {
            "sweep": ref.name,
            "trial_id": tags.get(TAG_TRIAL_ID, run.info.run_id),
            "run_id": run.info.run_id,
            "beta": _float(tags.get(TAG_CONFIG + "beta")),
            "latent_dim": _int(tags.get(TAG_CONFIG + "latent_dim")),
            "schedule": tags.get(TAG_CONFIG + "schedule"),
            "c_max": _float(tags.get(TAG_CONFIG + "c_max")),
            "gamma": _float(tags.get(TAG_CONFIG + "gamma")),
            "seed": _int(tags.get(TAG_CONFIG + "seed")),
            "rate": rate,
            "distortion": distortion,
            "nelbo": _float(metrics.get("nelbo")),
            "active_units": _float(metrics.get("active_units")),
            "status": status or ("completed" if run.info.status == "FINISHED" else run.info.status.lower()),
            "checkpoint_uri": f"runs:/{run.info.run_id}/{CHECKPOINT_ARTIFACT}" if status == "completed" else None,
            "params": dict(run.data.params),
            "_on_frontier_tag": tags.get(TAG_ON_FRONTIER),  # what the run shows now (publish only changes)
            "_pareto_rank": _int(metrics.get("pareto_rank")),
        }
        for name in OPTIONAL_METRICS:
            if name in metrics:
                row[name.replace("/", "_")] = _float(metrics[name])
        rows.append(row)
    return rows


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``pareto_rank`` and ``on_frontier``: only completed trials are ranked (stopped or failed ones are not on
    the frontier)."""
    done = [r for r in rows if r["status"] == "completed"]
    ranks = pareto_ranks(np.array([[r["rate"], r["distortion"]] for r in done]).reshape(-1, 2))
    for row in rows:
        row["pareto_rank"], row["on_frontier"] = None, False
    for row, rank in zip(done, ranks):
        row["pareto_rank"], row["on_frontier"] = int(rank), bool(rank == 0)
    return sorted(rows, key=lambda r: (r["pareto_rank"] is None, r["pareto_rank"] or 0, r["rate"]))


def frontier_rows(client, ref: SweepRef) -> list[dict[str, Any]]:
    return rank_rows(collect_rows(client, ref))


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The frontier table (docs/contracts.md columns, then any optional metrics present, then ``status``)."""
    optional = [n.replace("/", "_") for n in OPTIONAL_METRICS if any(n.replace("/", "_") in r for r in rows)]
    types = {"sweep": pa.string(), "trial_id": pa.string(), "run_id": pa.string(), "beta": pa.float64(),
             "latent_dim": pa.int64(), "schedule": pa.string(), "c_max": pa.float64(), "gamma": pa.float64(),
             "seed": pa.int64(), "rate": pa.float64(), "distortion": pa.float64(), "nelbo": pa.float64(),
             "active_units": pa.float64(), "on_frontier": pa.bool_(), "pareto_rank": pa.int64(),
             "checkpoint_uri": pa.string(), "status": pa.string()}  # fmt: skip
    names = COLUMNS + optional + ["status"]
    schema = pa.schema([(n, types.get(n, pa.float64())) for n in names])
    return pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows], schema=schema)


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path:
    sink = pa.BufferOutputStream()
    pq.write_table(to_table(rows), sink)
    return write_atomically(path, sink.getvalue().to_pybytes())


def read_parquet(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def frontier_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frontier points, by increasing rate."""
    return sorted((r for r in rows if r.get("on_frontier")), key=lambda r: r["rate"])
