"""MLflow tracking for a sweep: one parent run per sweep, one child run per trial, exactly once.

`MLflowTracking` is a Ray Tune callback that replaces the stock ``MLflowLoggerCallback``, which makes a second
run for every resumed trial (leaving the first one RUNNING), logs every numeric field of a result (timestamps,
pids, ``config/*``) and makes no parent run. Here:

- the parent run is found again by its tag ``bvae.sweep_key``, so a resumed sweep (a new driver process, a new
  or unpickled callback) continues the same parent run;
- a child run is found again by the tags ``mlflow.parentRunId`` + ``bvae.trial_id``, so a resumed trial
  continues its own run;
- only the contract metrics (docs/contracts.md, "Units and metric names") are logged, one ``log_batch`` per result;
- every run ends with an honest status: FINISHED / ``bvae.status=completed`` for a trial that trained to the end
  with finite rate and distortion, FAILED / ``failed`` for a non-finite or missing result, KILLED / ``pruned``
  for a trial a scheduler or a stopper ended early, FAILED / ``error`` for a trial that raised.

Everything goes through one ``MlflowClient(tracking_uri)``; the global ``mlflow.set_tracking_uri`` state is never
touched, and the tracking URI is made absolute up front (Tune workers run in trial folders, docs/operations.md).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import yaml
from ray.tune import Callback

from bvae_core.config import objective_settings

from .faults import kill_driver_if_planned
from .outcome import INTERRUPTED, NOTICE_KEY, error_line, trial_outcome
from .store import (
    CONTRACT_METRICS,
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_CONFIG,
    TAG_NOTICE,
    TAG_PARENT,
    TAG_REASON,
    TAG_RETRIES,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_SWEEP_KEY,
    TAG_TRIAL_ID,
    TrackingError,
    check_reachable,
    child_runs,
    find_parent_run,
    is_contract_metric,
    local_sqlite_path,
    provenance_tags,
    resolve_tracking_uri,
    search_by_tags,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

__all__ = [
    "CONTRACT_METRICS",
    "MLflowTracking",
    "TrackingError",
    "child_runs",
    "contract_metrics",
    "find_parent_run",
    "resolve_tracking_uri",
]

# log_batch limits of the MLflow REST API (1000 metrics, 100 params, 100 tags per request).
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
# MLflow refuses longer param values.
_MAX_PARAM_VALUE_LEN = 6000


# --------------------------------------------------------------------------------------------------------------
# Results → metrics, configs → params
# --------------------------------------------------------------------------------------------------------------


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}/")
        else:
            yield name, value


def _as_float(value: Any) -> float | None:
    if isinstance(value, (bool, str, bytes)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def contract_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The contract metrics present in a Tune result with finite values (nested dicts read as ``a/b``)."""
    out: dict[str, float] = {}
    for name, value in _flatten(result):
        if not is_contract_metric(name):
            continue
        number = _as_float(value)
        if number is not None and math.isfinite(number):
            out[name] = number
    return out


def _result_step(result: Mapping[str, Any]) -> int:
    for key in ("step", "training_iteration"):
        value = result.get(key)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
    return 0


def _param_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        try:
            text = json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = str(value)
    else:
        text = str(value)
    if len(text) > _MAX_PARAM_VALUE_LEN:
        text = text[: _MAX_PARAM_VALUE_LEN - 3] + "..."
    return text


def describe_trial(spec: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the params to log, the ``bvae.config.*`` tags) of a trial.

    The params are the trial's sampled values less those its objective does not use (a controlled-capacity trial
    logs no ``objective.beta``); the tags are its resolved :func:`~bvae_core.config.objective_settings`, which the
    frontier table and ``bvae pick`` read back from the run alone. A sweep spec (one with ``base``) that cannot
    resolve the trial's parameters is a bug and raises; a mapping without ``base`` (a callback driven by hand) has
    no train config, so its params are logged as given and there are no config tags."""
    if "base" not in spec:
        return dict(params), {}
    from .spec import parse_spec

    sweep = parse_spec(dict(spec))
    config = sweep.trial_config(dict(params))
    tags = {TAG_CONFIG + k: str(v) for k, v in objective_settings(config).items() if v is not None}
    return sweep.applied_params(dict(params), config), tags


# --------------------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------------------


_PERMANENT_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                              "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
                              "MALFORMED_REQUEST"})  # fmt: skip


def _transient(exc: BaseException) -> bool:
    """Would the same write succeed later? Unreachable stores, timeouts and 5xx answers: yes. A request the store
    refuses (4xx: bad value, missing run, no permission) or a bug in this code: no."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT_CODES
    return not isinstance(exc, (TypeError, ValueError, KeyError, AttributeError, AssertionError))


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'…' if len(text) > 300 else ''}"


class MLflowTracking(Callback):
    """Ray Tune callback: one MLflow parent run per sweep, one child run per trial, also across restores.

    Args:
        tracking_uri: MLflow tracking URI; relative sqlite/file paths are made absolute against the cwd.
        experiment: MLflow experiment name (created when missing).
        sweep_name: the sweep's name: the parent run's name and the ``bvae.sweep`` tag.
        sweep_key: a stable identity of the sweep (e.g. absolute storage path + name); the parent run is found
            again by the tag ``bvae.sweep_key``, so a resumed sweep continues it.
        spec: the sweep spec, logged on a new parent run as ``spec.yaml``.
        tags: extra tags for the parent run.
        artifact_location: where a *new* experiment keeps its artifacts. Default: MLflow's for a server; for a local
            sqlite store, ``mlartifacts/<experiment>`` beside the database (not ``./mlruns`` of whatever directory
            the driver runs in).

    Attributes:
        report_seconds: seconds spent in MLflow calls for each result logged (read by the benchmarks).
        parent_run_id: the parent run's id once `setup` ran.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        sweep_name: str,
        sweep_key: str,
        spec: dict,
        tags: dict[str, str] | None = None,
        *,
        artifact_location: str | None = None,
    ) -> None:
        if not experiment:
            raise ValueError("experiment name is empty")
        if not sweep_name:
            raise ValueError("sweep_name is empty")
        if not sweep_key:
            raise ValueError("sweep_key is empty")
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_key = sweep_key
        self.spec = dict(spec or {})
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.artifact_location = artifact_location
        self._reset_runtime_state()

    # -- pickling: Tune pickles the RunConfig (and so this callback) into tuner.pkl; keep only the arguments -------

    def _reset_runtime_state(self) -> None:
        self._client: MlflowClient | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_results: dict[str, dict] = {}
        self._ended: set[str] = set()  # trial ids whose run this callback ended
        self.interrupted = False  # set at the experiment's end: Tune stopped with trials not ended (Ctrl+C, `stop`)
        self.cut_off: set[str] = set()  # then: the trials Tune started here and stopped without ending them
        self._started: set[str] = set()  # trials Tune started or resumed in this driver (as Tune says, not MLflow)
        self._told_end: set[str] = set()  # trials Tune ended through on_trial_complete / on_trial_error
        self._closed = False
        self.report_seconds: list[float] = []
        self._outbox: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._retry_at = 0.0
        self._down_since: float | None = None
        self.delivered_late = 0  # writes kept while the store was down, then delivered
        self.skipped_writes = 0  # writes the store refused for good

    def __getstate__(self) -> dict:
        keep = ("tracking_uri", "experiment", "sweep_name", "sweep_key", "spec", "tags", "artifact_location")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_runtime_state()

    # -- client --------------------------------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            # Fail fast and let the outbox retry: MLflow's own retries would stall Tune's loop for minutes.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def _objectives(self) -> list[str]:
        search = self.spec.get("search")
        return list(search.get("objectives") or []) if isinstance(search, Mapping) else []

    @property
    def report_seconds_total(self) -> float:
        return float(sum(self.report_seconds))

    # -- Tune hooks ----------------------------------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        """Get or create the experiment and the parent run; a found parent is set RUNNING again.

        Raises `TrackingError` naming the URI when the tracking store cannot be used. Idempotent: the runner calls
        it while Ray starts (a fresh store creates its tables: seconds), Tune calls it again.
        """
        if self.parent_run_id is not None and not self._closed:
            return
        check_reachable(self.tracking_uri)
        try:
            self.experiment_id = self._get_or_create_experiment()
            self.parent_run_id = self._get_or_create_parent()
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"cannot use MLflow tracking store {self.tracking_uri} (experiment {self.experiment!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._closed = False

    # -- the outbox ------------------------------------------------------------------------------------------------
    # Every write goes through it, in order. A write that fails because the store is unreachable (or answers 5xx)
    # stays queued with everything after it, and is retried at the next hook (at most every RETRY_S seconds, also
    # from Tune's loop while nothing else happens): training goes on, nothing is lost. A write the store refuses
    # for good (a 4xx) is logged and skipped, so it cannot hold the others back.

    RETRY_S = 5.0

    def _submit(self, what: str, write: Callable[[], None]) -> None:
        self._outbox.append((what, write))
        self._flush()

    def _flush(self, force: bool = False) -> bool:
        """Deliver the queued writes in order; True when none is left."""
        if not self._outbox:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        while self._outbox:
            what, write = self._outbox[0]
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - classified below; tracking must not end a sweep
                if _transient(exc):
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        logger.warning("MLflow tracking: %s does not answer (%s); training goes on, writes are kept "
                                       "and retried", self.tracking_uri, _short_error(exc))  # fmt: skip
                    self._retry_at = time.monotonic() + self.RETRY_S
                    return False
                logger.warning("MLflow tracking: %s refused (%s); skipped", what, _short_error(exc))
                self.skipped_writes += 1
            self._outbox.popleft()
            if self._down_since is not None:
                self.delivered_late += 1
        if self._down_since is not None:
            logger.warning("MLflow tracking: %s answers again after %.0f s; %d kept writes delivered",
                           self.tracking_uri, time.monotonic() - self._down_since, self.delivered_late)  # fmt: skip
            self._down_since = None
        return True

    def _drain(self, timeout: float | None = None) -> bool:
        """Flush until the outbox is empty or ``timeout`` seconds (``BVAE_TRACKING_DRAIN_S``, default 120) pass."""
        timeout = float(os.environ.get("BVAE_TRACKING_DRAIN_S", "120")) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not self._flush(force=True):
            if time.monotonic() >= deadline:
                logger.error("MLflow tracking: %d writes could not be delivered to %s; their runs may show "
                             "RUNNING until `bvae sweep resume` ends them", len(self._outbox), self.tracking_uri)  # fmt: skip
                return False
            time.sleep(min(self.RETRY_S, max(0.0, deadline - time.monotonic())))
        return True

    @property
    def pending_writes(self) -> int:
        return len(self._outbox)

    # -- Tune hooks ----------------------------------------------------------------------------------------------

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self._outbox:
            self._flush()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # A resumed trial continues its run at once. A new trial gets its run with its first result: by then Tune
        # has saved the trial in its experiment state, so a driver killed at any moment leaves no run behind whose
        # trial a resume would not continue.
        self._started.add(trial.trial_id)

        def write() -> None:
            if trial.trial_id in self._runs or self._find_child(trial.trial_id) is not None:
                self._ensure_child(trial)

        self._submit(f"continuing the run of trial {trial.trial_id}", write)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric, Param

        kill_driver_if_planned("first_report")
        start = time.perf_counter()
        self._last_results[trial.trial_id] = result
        extra = result.get("metric_params")  # the disentanglement metrics' parameters
        params = [Param(f"eval.{k}", _param_value(v)) for k, v in extra.items()] if isinstance(extra, Mapping) else []
        step, now = _result_step(result), int(time.time() * 1000)
        metrics = [Metric(key=k, value=v, timestamp=now, step=step) for k, v in contract_metrics(result).items()]
        notice = result.get(NOTICE_KEY)
        if notice:
            logger.warning("trial %s: %s", trial.trial_id, notice)

        def write() -> None:
            run_id = self._ensure_child(trial)
            if notice:
                self.client.set_tag(run_id, TAG_NOTICE, str(notice)[:5000])
            for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)
            for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH], synchronous=True)

        self._submit(f"metrics of trial {trial.trial_id} at step {step}", write)
        self.report_seconds.append(time.perf_counter() - start)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._told_end.add(trial.trial_id)
        result = self._last_results.get(trial.trial_id) or getattr(trial, "last_result", None) or None
        outcome = trial_outcome(result, objectives=self._objectives)
        checkpoint = getattr(trial, "checkpoint", None) if outcome.completed else None

        def write() -> None:
            run_id = self._known_child(trial)
            if run_id is None:
                return  # never started (e.g. a PENDING trial removed at the end): no run to end
            if checkpoint is not None:
                self._log_checkpoint(checkpoint, run_id)
            self._end_child(trial.trial_id, run_id, outcome.run_status, outcome.status_tag, outcome.reason)

        self._submit(f"the end of trial {trial.trial_id}", write)

    def _log_checkpoint(self, checkpoint, run_id: str) -> None:
        """The trial's final checkpoint and figures as artifacts of its run (``checkpoint/``), so that the model
        of any frontier point can be fetched from the tracking server alone (Tune's storage may be gone)."""
        with checkpoint.as_directory() as folder:
            self.client.log_artifacts(run_id, folder, artifact_path="checkpoint")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        """A trial that failed and is retried from its last checkpoint (``search.max_failures``): count it on its
        run (tag ``bvae.retries``), which stays RUNNING."""

        def write() -> None:
            run_id = self._known_child(trial)
            if run_id is not None:
                retries = int(self.client.get_run(run_id).data.tags.get(TAG_RETRIES, "0")) + 1
                self.client.set_tag(run_id, TAG_RETRIES, str(retries))

        self._submit(f"the retry of trial {trial.trial_id}", write)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._told_end.add(trial.trial_id)
        outcome, reason = trial_outcome(None, error=True), error_line(trial)

        def write() -> None:
            run_id = self._known_child(trial) or self._ensure_child(trial)
            self._end_child(trial.trial_id, run_id, outcome.run_status, outcome.status_tag, reason)

        self._submit(f"the error of trial {trial.trial_id}", write)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Children still RUNNING → KILLED (``bvae.status=interrupted``); the parent → FINISHED, or KILLED when
        the sweep was interrupted (Ctrl+C: Tune ends here too) and `Tuner.restore` may continue it.

        Interrupted = a trial Tune has not ended (PENDING/PAUSED), or a trial started here whose run was never
        ended by `on_trial_complete`/`on_trial_error` (Tune marks the trials it cuts off TERMINATED without
        calling either). Kept writes are delivered first (waiting up to ``BVAE_TRACKING_DRAIN_S`` seconds)."""
        not_ended = any(getattr(t, "status", None) not in ("TERMINATED", "ERROR") for t in trials)
        self.cut_off = self._started - self._told_end  # Tune's own account, whatever MLflow has received so far
        self.interrupted = bool(self.cut_off) or not_ended
        if not self._drain():
            return
        cut_off = any(tid not in self._ended for tid in self._runs)  # runs MLflow has, never ended
        try:  # a trial cut off before its first report has no run, but Tune's account has it: interrupted all the same
            self._finish(parent_status=KILLED if (cut_off or self.interrupted) else FINISHED)
        except Exception as exc:  # noqa: BLE001 - tracking must not end a sweep
            logger.warning("MLflow tracking: ending the sweep's runs failed (%s)", _short_error(exc))

    def started_trials(self) -> set[str]:
        """The trials Tune started or resumed in this driver."""
        return set(self._started)

    def close(self, status: str = KILLED) -> None:
        """End the sweep's runs when the driver exits abnormally (e.g. KeyboardInterrupt): kept writes delivered
        (briefly), children still RUNNING → KILLED, the parent → ``status`` (FINISHED, FAILED or KILLED).
        Idempotent; an MLflow failure is logged, not raised."""
        if status not in (FINISHED, FAILED, KILLED):
            raise ValueError(f"close(status={status!r}): expected one of FINISHED, FAILED, KILLED")
        if self._closed:
            return
        try:
            self._drain(timeout=min(10.0, float(os.environ.get("BVAE_TRACKING_DRAIN_S", "120"))))
            self._finish(parent_status=status)
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow tracking: close failed (%s: %s)", type(exc).__name__, exc)

    # -- internals -----------------------------------------------------------------------------------------------

    def _get_or_create_experiment(self) -> str:
        """The experiment's id; a new one (or one without a kind) is marked a model-training experiment, so that
        MLflow 3's UI opens it on its runs table, charts and artifacts instead of its GenAI view."""
        client = self.client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            if experiment.lifecycle_stage != "active":
                raise TrackingError(
                    f"MLflow experiment {self.experiment!r} in {self.tracking_uri} is deleted; restore it "
                    f"(MlflowClient.restore_experiment) or name another experiment (tracking.experiment)"
                )
            if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # made elsewhere: the UI would guess GenAI
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return experiment.experiment_id
        location = self.artifact_location
        if location is None:
            db = local_sqlite_path(self.tracking_uri)
            if db is not None:
                safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.experiment).strip("._") or "experiment"
                location = str(db.parent / "mlartifacts" / safe)
        try:
            return client.create_experiment(self.experiment, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})  # fmt: skip
        except Exception:
            # Another process may have created it in between.
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _get_or_create_parent(self) -> str:
        client = self.client
        parent = find_parent_run(client, self.experiment, self.sweep_key)
        if parent is not None:
            if parent.info.status != RUNNING:
                client.update_run(parent.info.run_id, status=RUNNING)
            logger.info("MLflow tracking: continuing parent run %s of sweep %s", parent.info.run_id, self.sweep_name)
            return parent.info.run_id

        tags = {**self.tags, **provenance_tags()}
        tags[TAG_SWEEP] = self.sweep_name
        tags[TAG_SWEEP_KEY] = self.sweep_key
        run = client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_name)
        run_id = run.info.run_id
        client.log_text(run_id, yaml.safe_dump(self.spec, sort_keys=False), "spec.yaml")
        return run_id

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            # Tune calls setup() first; a caller driving the hooks by hand may not have.
            self.setup()
        assert self.parent_run_id is not None
        return self.parent_run_id

    def _known_child(self, trial: Trial) -> str | None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None and self.parent_run_id is not None:
            run = self._find_child(trial.trial_id)
            if run is not None:
                run_id = self._runs[trial.trial_id] = run.info.run_id
        return run_id

    def _find_child(self, trial_id: str) -> Run | None:
        runs = search_by_tags(
            self.client, [self.experiment_id], {TAG_PARENT: self.parent_run_id, TAG_TRIAL_ID: trial_id}
        )
        if not runs:
            return None
        return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def _ensure_child(self, trial: Trial) -> str:
        """The child run of ``trial``: found (and set RUNNING again) or created with its params."""
        trial_id = trial.trial_id
        run_id = self._runs.get(trial_id)
        if run_id is not None and trial_id not in self._ended:
            return run_id
        parent_run_id = self._require_parent()
        client = self.client
        if run_id is None:
            found = self._find_child(trial_id)
            if found is None:
                run_id = self._create_child(trial, parent_run_id)
                self._runs[trial_id] = run_id
                self._ended.discard(trial_id)
                return run_id
            run = found
            run_id = run.info.run_id
        else:
            run = client.get_run(run_id)
        if run.info.status != RUNNING:
            client.update_run(run_id, status=RUNNING)
        if TAG_REASON in run.data.tags:  # why it ended before (an error a resume trains past): no longer so
            client.delete_tag(run_id, TAG_REASON)
        client.set_tag(run_id, TAG_STATUS, "running")
        self._runs[trial_id] = run_id
        self._ended.discard(trial_id)
        return run_id

    def _create_child(self, trial: Trial, parent_run_id: str) -> str:
        from mlflow.entities import Param

        client = self.client
        tags = {
            TAG_PARENT: parent_run_id,
            TAG_TRIAL_ID: trial.trial_id,
            TAG_SWEEP: self.sweep_name,
            TAG_SWEEP_KEY: self.sweep_key,
            TAG_STATUS: "running",
        }
        params, config_tags = describe_trial(self.spec, getattr(trial, "config", None) or {})
        tags.update(config_tags)
        run = client.create_run(self.experiment_id, tags=tags, run_name=f"{self.sweep_name}-{trial.trial_id}")
        run_id = run.info.run_id
        logged = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(logged), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=logged[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)
        return run_id

    def _end_child(self, trial_id: str, run_id: str, status: str, status_tag: str, reason: str = "") -> None:
        self.client.set_tag(run_id, TAG_STATUS, status_tag)
        if reason:
            self.client.set_tag(run_id, TAG_REASON, reason[:5000])
        self.client.set_terminated(run_id, status=status)
        self._ended.add(trial_id)

    def _finish(self, parent_status: str) -> None:
        if self.parent_run_id is None:
            self._closed = True
            return
        client = self.client
        for run in child_runs(client, self.parent_run_id):
            if run.info.status == RUNNING:
                client.set_tag(run.info.run_id, TAG_STATUS, INTERRUPTED.status_tag)
                client.set_terminated(run.info.run_id, status=INTERRUPTED.run_status)
                trial_id = run.data.tags.get(TAG_TRIAL_ID)
                if trial_id:
                    self._ended.add(trial_id)
        client.set_terminated(self.parent_run_id, status=parent_status)
        self._closed = True

