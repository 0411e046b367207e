"""Keeps a sweep's parent run showing its frontier while the sweep runs: after every finished trial the parent gets
``hypervolume`` and ``frontier_size`` (step = finished trials), the frontier table (``frontier.parquet``), the R-D
figure (``rd_frontier.png`` and the interactive ``rd_frontier.html``), and each child run its ``pareto_rank`` and
the tag ``bvae.on_frontier``. Everything is read back from the tracking store, so a resumed sweep counts the trials
that finished before it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Callback

from .faults import kill_driver_if_planned
from .frontier import DEFAULT_REFERENCE_RATE, TAG_ON_FRONTIER, SweepRef, collect_rows, hypervolume_2d, rank_rows, write_parquet
from .frontier_plots import html_page, png_bytes, reference_curves
from .spec import parse_spec
from .store import find_parent_run

logger = logging.getLogger(__name__)

PARAM_REFERENCE_RATE = "frontier.reference_rate"
PARAM_REFERENCE_DISTORTION = "frontier.reference_distortion"


def reference_point(spec, client, parent_run_id: str) -> tuple[float, float]:
    """The sweep's fixed hypervolume reference: the spec's, else 50 nats and the zero-rate distortion of the data —
    computed once and kept on the parent run as params, so it never moves (not even across a resume)."""
    params = client.get_run(parent_run_id).data.params
    if PARAM_REFERENCE_RATE in params and PARAM_REFERENCE_DISTORTION in params:
        return float(params[PARAM_REFERENCE_RATE]), float(params[PARAM_REFERENCE_DISTORTION])
    rate = spec.frontier.reference_rate or DEFAULT_REFERENCE_RATE
    distortion = spec.frontier.reference_distortion
    if distortion is None:
        distortion = zero_rate_distortion_of(spec.base_config)
    client.log_param(parent_run_id, PARAM_REFERENCE_RATE, rate)
    client.log_param(parent_run_id, PARAM_REFERENCE_DISTORTION, distortion)
    return float(rate), float(distortion)


def zero_rate_distortion_of(config) -> float:
    from bvae_core.data import make_dataset
    from bvae_core.evaluation import zero_rate_distortion
    from bvae_core.objectives import make_likelihood

    dataset = make_dataset(config.dataset.name, "cpu", **config.dataset.model_dump(exclude={"name"}))
    likelihood = make_likelihood(config.model.likelihood.kind, getattr(config.model.likelihood, "sigma", 1.0))
    return zero_rate_distortion(likelihood, dataset, n_eval=config.train.n_eval)


def hypervolume_label(hv: float, completed: int, reference: tuple[float, float]) -> str:
    """``HV …`` for a figure's title; a zero says why: no completed point is under the reference point."""
    if hv > 0 or not completed:
        return f"HV {hv:.4g}"
    return f"HV 0 (no point has rate < {reference[0]:.4g} and distortion < {reference[1]:.4g} nats, the reference)"


def publish_frontier(client, ref: SweepRef, spec, reference: tuple[float, float], finished: int | None = None) -> list[dict]:
    """Recompute the frontier from the store and publish it on the parent and child runs; return the rows."""
    rows = rank_rows(collect_rows(client, ref))
    done = [r for r in rows if r["status"] == "completed"]
    hv = hypervolume_2d(np.array([[r["rate"], r["distortion"]] for r in done]).reshape(-1, 2), reference)
    step = finished if finished is not None else len(rows)
    from mlflow.entities import Metric

    now = _now_ms()
    client.log_batch(ref.parent_run_id, metrics=[
        Metric("hypervolume", hv, now, step), Metric("frontier_size", float(sum(r["on_frontier"] for r in rows)), now, step)])  # fmt: skip
    for row in rows:  # only what changed: a tag write per child per update would be O(trials²) requests
        want = "true" if row["on_frontier"] else "false"
        if row.get("_on_frontier_tag") != want:
            client.set_tag(row["run_id"], TAG_ON_FRONTIER, want)
        if row["pareto_rank"] is not None and row.get("_pareto_rank") != row["pareto_rank"]:
            client.log_metric(row["run_id"], "pareto_rank", float(row["pareto_rank"]), step=0)
    curves = reference_curves(spec.base_config)
    title = (f"{ref.name}: {len(done)} completed trials, {sum(r['on_frontier'] for r in rows)} on the frontier, "
             f"{hypervolume_label(hv, len(done), reference)}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_parquet(rows, folder / "frontier.parquet")
        (folder / "rd_frontier.png").write_bytes(png_bytes(rows, title, **curves))
        (folder / "rd_frontier.html").write_text(html_page(rows, title, **curves), encoding="utf-8")
        if any(r.get("mig") is not None for r in rows):
            (folder / "rd_frontier_mig.png").write_bytes(png_bytes(rows, title, color_by="mig", **curves))
        client.log_artifacts(ref.parent_run_id, str(folder))
    return rows


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


class LiveFrontier(Callback):
    """Ray Tune callback (after :class:`~sweeps.tracking.MLflowTracking` in the callback list) that republishes the
    frontier whenever a trial ends."""

    def __init__(self, tracking_uri: str, spec: dict[str, Any], sweep_key: str):
        self.tracking_uri, self.spec_raw, self.sweep_key = tracking_uri, spec, sweep_key
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._ref: SweepRef | None = None
        self._reference: tuple[float, float] | None = None
        self._finished = 0
        self._published = -1

    def __getstate__(self) -> dict:  # pickled into Tune's experiment state: arguments only
        return {"tracking_uri": self.tracking_uri, "spec_raw": self.spec_raw, "sweep_key": self.sweep_key}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _ensure(self) -> bool:
        if self._ref is None:
            spec = parse_spec(self.spec_raw)
            parent = find_parent_run(self.client, spec.experiment, self.sweep_key)
            if parent is None:
                return False
            reference = reference_point(spec, self.client, parent.info.run_id)
            self._spec, self._reference = spec, reference
            self._ref = SweepRef(spec.name, parent.info.run_id, parent.info.experiment_id)  # set last: ready
        return True

    def update(self) -> None:
        if self._finished == self._published:
            return
        try:
            if self._ensure():
                publish_frontier(self.client, self._ref, self._spec, self._reference, self._finished)
                self._published = self._finished
        except Exception as exc:  # noqa: BLE001 - the live view must never end a sweep
            logger.warning("live frontier: update failed (%s: %s)", type(exc).__name__, exc)

    def setup(self, **info: Any) -> None:
        try:
            self._ensure()
        except Exception as exc:  # noqa: BLE001
            logger.warning("live frontier: setup failed (%s: %s)", type(exc).__name__, exc)

    @staticmethod
    def _count_finished(trials, trial=None) -> int:
        # Tune calls the hooks before it sets the ending trial's status: count that one explicitly
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        return len(ended | ({trial.trial_id} if trial is not None else set()))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished = self._count_finished(trials, trial)
        self.update()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished = self._count_finished(trials, trial)
        self.update()

    def on_experiment_end(self, trials, **info):
        kill_driver_if_planned("final_frontier")
        self._finished = self._count_finished(trials)
        self.update()
