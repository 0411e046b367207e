"""MLflow tracking for a sweep: one parent run per sweep, one child run per trial, exactly once.

`MLflowTracking` is a Ray Tune callback that replaces the stock ``MLflowLoggerCallback``, which makes a second
run for every resumed trial (leaving the first one RUNNING), logs every numeric field of a result (timestamps,
pids, ``config/*``) and makes no parent run. Here:

- the parent run is found again by its tag ``bvae.sweep_key``, so a resumed sweep (a new driver process, a new
  or unpickled callback) continues the same parent run;
- a child run is found again by the tags ``mlflow.parentRunId`` + ``bvae.trial_id``, so a resumed trial
  continues its own run;
- only the contract metrics (DESIGN.md §3, "Units and metric names") are logged, one ``log_batch`` per result;
- every run ends with an honest status: FINISHED / ``bvae.status=completed`` for a trial that trained to the end
  with finite rate and distortion, FAILED / ``failed`` for a non-finite or missing result, KILLED / ``pruned``
  for a trial a scheduler or a stopper ended early, FAILED / ``error`` for a trial that raised.

Everything goes through one ``MlflowClient(tracking_uri)``; the global ``mlflow.set_tracking_uri`` state is never
touched, and the tracking URI is made absolute up front (Tune workers run in trial folders, STACK.md).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from ray.tune import Callback

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

__all__ = [
    "CONTRACT_METRICS",
    "KL_METRIC",
    "MLflowTracking",
    "TrackingError",
    "child_runs",
    "contract_metrics",
    "find_parent_run",
    "resolve_tracking_uri",
]

#: The metric names a trial may log (DESIGN.md §3), besides ``kl/<int>`` (see `KL_METRIC`).
CONTRACT_METRICS: tuple[str, ...] = (
    "rate",
    "distortion",
    "nelbo",
    "sse",
    "active_units",
    "capacity",
    "beta",
    "train/loss",
    "train/rate",
    "train/distortion",
    "mig",
    "sap",
    "factorvae_score",
    "betavae_score",
    "dci/disentanglement",
    "dci/completeness",
    "dci/informativeness",
)
_CONTRACT_SET = frozenset(CONTRACT_METRICS)
#: Per-dimension KL: ``kl/0``, ``kl/1``, …
KL_METRIC = re.compile(r"^kl/\d+$")

# Tag names.
TAG_SWEEP = "bvae.sweep"
TAG_SWEEP_KEY = "bvae.sweep_key"
TAG_TRIAL_ID = "bvae.trial_id"
TAG_STATUS = "bvae.status"
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"

# MLflow run statuses (mlflow.entities.RunStatus names).
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"

# log_batch limits of the MLflow REST API (1000 metrics, 100 params, 100 tags per request).
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
# MLflow refuses longer param values.
_MAX_PARAM_VALUE_LEN = 6000

_VERSION_TAGS = {
    "bvae.version.torch": "torch",
    "bvae.version.ray": "ray",
    "bvae.version.optuna": "optuna",
    "bvae.version.mlflow": "mlflow",
}


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, deleted experiment, …)."""


# --------------------------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------------------------

_SQLITE_EXTS = (".db", ".sqlite", ".sqlite3")
_PASSTHROUGH_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql")


def resolve_tracking_uri(uri: str | None, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Return an absolute MLflow tracking URI.

    - ``None`` → ``sqlite:///<absolute cwd>/mlflow.db`` (the CLI's default, DESIGN.md §3);
    - a relative sqlite URI (``sqlite:///mlflow.db``, ``sqlite:///./runs/m.db``) → absolute against ``base_dir``
      (default: the current directory); ``sqlite:////abs/m.db`` and in-memory sqlite are returned unchanged;
    - a relative ``file:`` URI → an absolute ``file://`` URI;
    - a bare path → ``sqlite:///`` for ``*.db``/``*.sqlite``/``*.sqlite3``, else an absolute ``file://`` URI
      (MLflow 3 refuses the file store unless explicitly allowed);
    - http(s)://, databricks, postgresql://, … → unchanged.
    """
    base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
    if uri is None:
        return f"sqlite:///{Path(os.getcwd()).resolve() / 'mlflow.db'}"
    uri = str(uri).strip()
    if not uri:
        raise ValueError("tracking uri is empty; give a URI such as sqlite:///mlflow.db or http://127.0.0.1:5000")
    if uri.lower() in _PASSTHROUGH_SCHEMES:  # "databricks", "databricks-uc": a profile, not a path
        return uri
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", uri) else ""

    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        prefix, sep, rest = uri.partition(":///")
        if not sep:  # "sqlite://" (in memory) or something odd: leave it to MLflow
            return uri
        path, qmark, query = rest.partition("?")
        if path in ("", ":memory:") or path.startswith("/"):
            return uri
        absolute = (base / path).resolve()
        return f"{prefix}:///{absolute}{qmark}{query}"

    if scheme == "file":
        parsed = urllib.parse.urlparse(uri)
        path = urllib.parse.unquote(parsed.path or parsed.netloc)
        if parsed.netloc and parsed.path:  # file://host/path: leave alone
            return uri
        if os.path.isabs(path):
            return Path(path).as_uri()
        return (base / path).resolve().as_uri()

    if scheme and len(scheme) > 1:  # any other scheme (http, databricks, postgresql, …): unchanged
        return uri

    # A bare path (or a Windows drive letter, which len(scheme) == 1 catches).
    path = Path(uri).expanduser()
    absolute = path if path.is_absolute() else (base / path)
    absolute = absolute.resolve()
    if absolute.suffix.lower() in _SQLITE_EXTS:
        return f"sqlite:///{absolute}"
    return absolute.as_uri()


def _local_sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute sqlite URI, else None."""
    if not uri.lower().startswith("sqlite"):
        return None
    _, sep, rest = uri.partition(":///")
    path = rest.partition("?")[0]
    if not sep or not path.startswith("/"):
        return None
    return Path(path)


def _check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast (not after MLflow's minutes of retries) when an http(s) tracking server does not answer."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - the user's own tracking server
            pass
    except urllib.error.HTTPError:
        return  # it answered (maybe 401/404 behind a proxy): reachable
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it (infra/) or pass another "
            f"--tracking-uri"
        ) from exc


# --------------------------------------------------------------------------------------------------------------
# Searching runs
# --------------------------------------------------------------------------------------------------------------


def _tag_eq(key: str, value: str) -> str | None:
    """A search filter ``tags.`key` = 'value'``, or None when the value cannot be quoted in MLflow's grammar."""
    if "'" in value or "\\" in value:
        return None
    return f"tags.`{key}` = '{value}'"


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _search_by_tags(client: MlflowClient, experiment_ids: list[str], tags: Mapping[str, str]) -> list[Run]:
    """Active runs whose tags equal ``tags`` (values quoted in the filter where MLflow allows it, checked after)."""
    clauses = [c for c in (_tag_eq(k, v) for k, v in tags.items()) if c is not None]
    runs = _search_all(client, experiment_ids, " and ".join(clauses))
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


def find_parent_run(client: MlflowClient, experiment_name: str, sweep_key: str) -> Run | None:
    """The parent run of the sweep ``sweep_key`` in ``experiment_name`` (the oldest if several), else None."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    runs = _search_by_tags(client, [experiment.experiment_id], {TAG_SWEEP_KEY: sweep_key})
    runs = [r for r in runs if TAG_PARENT not in r.data.tags]
    if not runs:
        return None
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The (active) child runs of a parent run, oldest first."""
    parent = client.get_run(parent_run_id)
    runs = _search_by_tags(client, [parent.info.experiment_id], {TAG_PARENT: parent_run_id})
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


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


def _is_contract(name: str) -> bool:
    return name in _CONTRACT_SET or KL_METRIC.match(name) is not None


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
        if not _is_contract(name):
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


def _finite(result: Mapping[str, Any] | None, key: str) -> bool:
    if not result or key not in result:
        return False
    number = _as_float(result[key])
    return number is not None and math.isfinite(number)


def _trial_outcome(result: Mapping[str, Any] | None) -> tuple[str, str]:
    """(bvae.status, MLflow status) of a trial that Tune completed, from its last result."""
    if not (_finite(result, "rate") and _finite(result, "distortion")):
        return "failed", FAILED
    if not result.get("done_training"):
        return "pruned", KILLED
    return "completed", FINISHED


def _config_tags(spec: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, str]:
    """Tags ``bvae.config.<key>`` with the trial's resolved β, latent size, schedule, C max, γ and seed: the frontier
    table reads them back from the run alone. Empty when the spec cannot resolve the parameters."""
    try:
        from .spec import parse_spec

        config = parse_spec(dict(spec)).trial_config(dict(params))
    except Exception:  # noqa: BLE001 - a partial spec (tests, hand-driven hooks) just gets no config tags
        return {}
    schedule = config.objective.schedule
    # the capacity objective has no β (γ weighs |KL − C|): no β tag, rather than one that means nothing
    beta = None if schedule.kind == "linear_capacity" else config.objective.beta
    values = {"beta": beta, "latent_dim": config.model.latent_dim, "schedule": schedule.kind,
              "c_max": getattr(schedule, "c_max", None), "gamma": getattr(schedule, "gamma", None), "seed": config.seed,
              "arch": config.model.arch, "dataset": config.dataset.name}  # fmt: skip
    return {f"bvae.config.{k}": str(v) for k, v in values.items() if v is not None}


# --------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------


def _version_tags() -> dict[str, str]:
    tags = {"bvae.version.python": platform.python_version()}
    for tag, dist in _VERSION_TAGS.items():
        try:
            tags[tag] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return tags


def _git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


# --------------------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------------------


def _guarded(method):
    """An MLflow failure in a Tune hook logs a warning instead of failing the sweep."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must not end a sweep
            logger.warning("MLflow tracking: %s failed (%s: %s)", method.__name__, type(exc).__name__, exc)
            return None

    return wrapper


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
        self._closed = False
        self.report_seconds: list[float] = []

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

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

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
        _check_reachable(self.tracking_uri)
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

    @_guarded
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # A resumed trial continues its run at once. A new trial gets its run with its first result: by then Tune
        # has saved the trial in its experiment state, so a driver killed at any moment leaves no run behind whose
        # trial a resume would not continue.
        if trial.trial_id in self._runs or self._find_child(trial.trial_id) is not None:
            self._ensure_child(trial)

    @_guarded
    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any
    ) -> None:
        start = time.perf_counter()
        try:
            self._last_results[trial.trial_id] = result
            run_id = self._ensure_child(trial)
            extra_params = result.get("metric_params")
            if isinstance(extra_params, Mapping) and extra_params:  # the disentanglement metrics' parameters
                from mlflow.entities import Param

                params = [Param(f"eval.{k}", _param_value(v)) for k, v in extra_params.items()]
                for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
                    self.client.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)
            metrics = contract_metrics(result)
            if metrics:
                from mlflow.entities import Metric

                step = _result_step(result)
                now = int(time.time() * 1000)
                batch = [Metric(key=k, value=v, timestamp=now, step=step) for k, v in metrics.items()]
                for i in range(0, len(batch), _MAX_METRICS_PER_BATCH):
                    self.client.log_batch(run_id, metrics=batch[i : i + _MAX_METRICS_PER_BATCH], synchronous=True)
        finally:
            self.report_seconds.append(time.perf_counter() - start)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = self._last_results.get(trial.trial_id) or getattr(trial, "last_result", None) or None
        run_id = self._known_child(trial)
        if run_id is None:
            return  # never started (e.g. a PENDING trial removed at the end): no run to end
        status_tag, status = _trial_outcome(result)
        if status_tag == "completed":
            self._log_checkpoint(trial, run_id)
        self._end_child(trial.trial_id, run_id, status, status_tag)

    def _log_checkpoint(self, trial: Trial, run_id: str) -> None:
        """The trial's final checkpoint and figures as artifacts of its run (``checkpoint/``), so that the model
        of any frontier point can be fetched from the tracking server alone (Tune's storage may be gone)."""
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            self.client.log_artifacts(run_id, folder, artifact_path="checkpoint")

    @_guarded
    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self._known_child(trial)
        if run_id is None:
            run_id = self._ensure_child(trial)
        self._end_child(trial.trial_id, run_id, FAILED, "error")

    @_guarded
    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Children still RUNNING → KILLED (``bvae.status=interrupted``); the parent → FINISHED, or KILLED when
        the sweep was interrupted (Ctrl+C: Tune ends here too) and `Tuner.restore` may continue it.

        Interrupted = a trial Tune has not ended (PENDING/PAUSED), or a trial started here whose run was never
        ended by `on_trial_complete`/`on_trial_error` (Tune marks the trials it cuts off TERMINATED without
        calling either)."""
        cut_off = any(tid not in self._ended for tid in self._runs)
        not_ended = any(getattr(t, "status", None) not in ("TERMINATED", "ERROR") for t in trials)
        self._finish(parent_status=KILLED if (cut_off or not_ended) else FINISHED)

    def close(self, status: str = KILLED) -> None:
        """End the sweep's runs when the driver exits abnormally (e.g. KeyboardInterrupt): children still
        RUNNING → KILLED, the parent → ``status`` (FINISHED, FAILED or KILLED). Idempotent; an MLflow failure
        is logged, not raised."""
        if status not in (FINISHED, FAILED, KILLED):
            raise ValueError(f"close(status={status!r}): expected one of FINISHED, FAILED, KILLED")
        if self._closed:
            return
        try:
            self._finish(parent_status=status)
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow tracking: close failed (%s: %s)", type(exc).__name__, exc)

    # -- internals -----------------------------------------------------------------------------------------------

    def _get_or_create_experiment(self) -> str:
        client = self.client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            if experiment.lifecycle_stage != "active":
                raise TrackingError(
                    f"MLflow experiment {self.experiment!r} in {self.tracking_uri} is deleted; restore it "
                    f"(MlflowClient.restore_experiment) or name another experiment (tracking.experiment)"
                )
            return experiment.experiment_id
        location = self.artifact_location
        if location is None:
            db = _local_sqlite_path(self.tracking_uri)
            if db is not None:
                safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.experiment).strip("._") or "experiment"
                location = str(db.parent / "mlartifacts" / safe)
        try:
            return client.create_experiment(self.experiment, artifact_location=location)
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

        tags = {**self.tags, **_version_tags()}
        commit = _git_commit()
        if commit:
            tags[TAG_GIT_COMMIT] = commit
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
        runs = _search_by_tags(
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
            run_id = found.info.run_id
            status = found.info.status
        else:
            status = client.get_run(run_id).info.status
        if status != RUNNING:
            client.update_run(run_id, status=RUNNING)
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
        config = getattr(trial, "config", None) or {}
        tags.update(_config_tags(self.spec, config))
        run = client.create_run(self.experiment_id, tags=tags, run_name=f"{self.sweep_name}-{trial.trial_id}")
        run_id = run.info.run_id
        params = [Param(str(k), _param_value(v)) for k, v in config.items()]
        for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=params[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)
        return run_id

    def _end_child(self, trial_id: str, run_id: str, status: str, status_tag: str) -> None:
        self.client.set_tag(run_id, TAG_STATUS, status_tag)
        self.client.set_terminated(run_id, status=status)
        self._ended.add(trial_id)

    def _finish(self, parent_status: str) -> None:
        if self.parent_run_id is None:
            self._closed = True
            return
        client = self.client
        for run in child_runs(client, self.parent_run_id):
            if run.info.status == RUNNING:
                client.set_tag(run.info.run_id, TAG_STATUS, "interrupted")
                client.set_terminated(run.info.run_id, status=KILLED)
                trial_id = run.data.tags.get(TAG_TRIAL_ID)
                if trial_id:
                    self._ended.add(trial_id)
        client.set_terminated(self.parent_run_id, status=parent_status)
        self._closed = True

