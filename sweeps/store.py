"""The tracking store as data: tag names, the metric names a trial logs, tracking-URI rules, provenance, and the
run look-ups — which parent run *is* a sweep, and its child runs — decided once, here, and paged.

This module imports MLflow lazily and never Ray or Optuna: ``bvae frontier``, ``bvae pick`` and the registry use
it from any machine that reaches the tracking server. The Tune callback that writes runs
(:mod:`sweeps.tracking`) builds on it.

MLflow layout (see ``docs/contracts.md``): one parent run per sweep, tagged ``bvae.sweep`` (its name) and
``bvae.sweep_key`` (its identity: where its Tune experiment is stored); one child run per trial, tagged
``mlflow.parentRunId`` and ``bvae.trial_id``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import platform
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient
    from mlflow.entities import Run

# ---------------------------------------------------------------- tags
TAG_SWEEP = "bvae.sweep"
TAG_SWEEP_KEY = "bvae.sweep_key"
TAG_TRIAL_ID = "bvae.trial_id"
TAG_STATUS = "bvae.status"
TAG_REASON = "bvae.reason"  # why a trial did not complete (one line)
TAG_NOTICE = "bvae.notice"  # something the user should know about the trial (e.g. a checkpoint fallback)
TAG_RETRIES = "bvae.retries"  # times a trial was retried from its checkpoint
TAG_ON_FRONTIER = "bvae.on_frontier"
TAG_CONFIG = "bvae.config."  # + beta, latent_dim, schedule, c_max, gamma, seed, …: the trial's resolved config
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PACKAGE_VERSION = "bvae.version.bvae-sweeps"

#: The experiment tag that marks an experiment's kind: "custom_model_development" ("Machine learning": runs, charts,
#: artifacts) rather than "genai_development" ("Evaluation runs", traces, the assistant panel). MLflow 3.17's UI
#: chooses its view from a global "GenAI | Model training" switch instead (default GenAI, kept in the browser's
#: localStorage), which a link overrides with ``?workflowType=machine_learning``: see `experiment_url`.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment (or of one of its runs) in the model-training view, for an http(s)
    tracking server; None for a local store (its UI runs elsewhere: ``mlflow ui``)."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    page = f"experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{tracking_uri.rstrip('/')}/#/{page}?workflowType=machine_learning"


# MLflow run statuses (mlflow.entities.RunStatus names).
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"

# ---------------------------------------------------------------- metric names (docs/contracts.md, "Units")
#: The metric names a trial may log, besides the per-latent families in `PER_LATENT_METRIC`.
CONTRACT_METRICS: tuple[str, ...] = (
    "rate", "distortion", "nelbo", "sse", "active_units",
    "mutual_info", "marginal_kl", "total_correlation", "dimwise_kl",
    "capacity", "capacity_multiplier", "beta", "train/loss", "train/rate", "train/distortion",
    "mig", "sap", "factorvae_score", "betavae_score",
    "dci/disentanglement", "dci/completeness", "dci/informativeness",
)  # fmt: skip
#: Per-latent metrics: ``kl/0``, ``kl/1``, …, ``mi/0``, …
PER_LATENT_METRIC = re.compile(r"^(kl|mi)/\d+$")
#: Metrics copied into the frontier table when a trial has them (``/`` becomes ``_`` in the column name).
TABLE_METRICS: tuple[str, ...] = (
    "sse", "mutual_info", "marginal_kl", "total_correlation", "dimwise_kl",
    "mig", "sap", "dci/disentanglement", "dci/completeness", "dci/informativeness", "factorvae_score", "betavae_score",
)  # fmt: skip
_CONTRACT_SET = frozenset(CONTRACT_METRICS)


def is_contract_metric(name: str) -> bool:
    return name in _CONTRACT_SET or PER_LATENT_METRIC.match(name) is not None


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, deleted experiment, …)."""


class SweepNotFound(ValueError):
    """No sweep matches what the user named; the message lists what the store holds."""


# ---------------------------------------------------------------- URIs
_SQLITE_EXTS = (".db", ".sqlite", ".sqlite3")
_PASSTHROUGH_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "mssql")


def resolve_tracking_uri(uri: str | None, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Return an absolute MLflow tracking URI (trials run in other directories than the driver).

    - ``None`` → ``sqlite:///<absolute cwd>/mlflow.db`` (the CLI's default);
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
    check_not_host_port(uri)
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


#: The schemes MLflow 3 opens as a tracking store; a SQLAlchemy driver may follow a '+' (postgresql+psycopg2://).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https",
                    "databricks", "databricks-uc", "uc")


#: ``HOST:PORT`` (``127.0.0.1:5000``, ``mlflow.internal:5000/``): a server's address without ``http://``.
_HOST_PORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*:\d{1,5}/?$")


def check_not_host_port(uri: str) -> None:
    """Raise ValueError for a server address without its scheme: MLflow would read ``127.0.0.1:5000`` as a folder
    and ``localhost:5000`` as a scheme, and say neither."""
    if _HOST_PORT.match(uri):
        raise ValueError(f"{uri!r} is a server address without its scheme; expected http://{uri.rstrip('/')} "
                         f"(or a local path / sqlite:///FILE.db)")


def check_scheme(uri: str) -> None:
    """Raise ValueError when ``uri`` names a scheme MLflow cannot open as a tracking store (MLflow's own error comes
    from its model registry and names neither the setting nor the schemes it takes). Bare paths pass."""
    check_not_host_port(uri)
    if uri.lower() in _PASSTHROUGH_SCHEMES or not re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", uri):
        return
    scheme = uri.split(":", 1)[0].lower()
    if len(scheme) > 1 and scheme.split("+", 1)[0] not in TRACKING_SCHEMES:
        raise ValueError(f"unsupported scheme {scheme + ':'!r} in {uri!r}; expected a local path or one of "
                         f"{', '.join(s + ':' for s in TRACKING_SCHEMES)}")


def tracking_uri_given(cli_uri: str | None, spec_uri: str | None = None) -> tuple[str | None, str]:
    """The tracking URI a command was given and where it came from, by precedence: ``--tracking-uri``, the spec's
    ``tracking.uri``, ``$MLFLOW_TRACKING_URI`` (MLflow's own variable, which ``python -m infra.devstack env``
    exports); ``(None, "--tracking-uri")`` when none is (the caller's default: ``sqlite:///mlflow.db`` here)."""
    env = os.environ.get("MLFLOW_TRACKING_URI") or None
    for uri, source in ((cli_uri, "--tracking-uri"), (spec_uri, "tracking.uri"), (env, "$MLFLOW_TRACKING_URI")):
        if uri is not None:
            return uri, source
    return None, "--tracking-uri"


def resolve_given_tracking_uri(cli_uri: str | None, spec_uri: str | None = None,
                               base_dir: str | os.PathLike[str] | None = None) -> tuple[str, str]:  # fmt: skip
    """:func:`tracking_uri_given`, made absolute by :func:`resolve_tracking_uri`: ``(uri, source)``; a URI that
    cannot be resolved raises :class:`TrackingError` naming its source."""
    uri, source = tracking_uri_given(cli_uri, spec_uri)
    try:
        return resolve_tracking_uri(uri, base_dir), source
    except ValueError as exc:
        raise TrackingError(f"{source}: {exc}") from None


def local_sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute sqlite URI, else None."""
    if not uri.lower().startswith("sqlite"):
        return None
    _, sep, rest = uri.partition(":///")
    path = rest.partition("?")[0]
    if not sep or not path.startswith("/"):
        return None
    return Path(path)


def check_local_store(uri: str) -> None:
    """Raise ValueError for a local store MLflow cannot open, before it retries for minutes or prints SQL: a sqlite
    URI naming a folder or a file that is not an SQLite database, or a file store MLflow 3 refuses."""
    db = local_sqlite_path(uri)
    try:
        if db is not None and db.is_dir():
            raise ValueError(f"{uri}: {db} is a folder; expected an SQLite database file (e.g. sqlite:///"
                             f"{db / 'mlflow.db'})")  # fmt: skip
        if db is not None and db.is_file() and db.stat().st_size > 0:
            with open(db, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise ValueError(f"{uri}: {db} is not an SQLite database (an MLflow store made by sqlite:///FILE)")
    except OSError as exc:  # a folder on the way this user may not enter or read
        raise ValueError(f"{uri}: cannot read {db} ({exc.strerror or exc})") from None
    if uri.lower().startswith("file:") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise ValueError(f"{uri} is MLflow's file store (./mlruns), which MLflow 3 opens only with "
                         f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///mlflow.db (`mlflow migrate-filestore` moves a "
                         f"file store's runs there) or a tracking server")  # fmt: skip


def check_reachable(uri: str, timeout: float = 10.0) -> None:
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
            f"MLflow tracking server {uri} is unreachable ({getattr(exc, 'reason', exc)}); start it "
            f"(`python -m infra.devstack up`, in a clone of this project, starts a local one) or pass another --tracking-uri"
        ) from exc


def check_store_exists(uri: str, source: str = "--tracking-uri") -> None:
    """For commands that only read (frontier, pick): a local sqlite store must exist, a server must answer. Errors
    name ``source``, where the URI came from (:func:`tracking_uri_given`)."""
    try:
        check_scheme(uri)
        check_local_store(uri)
    except ValueError as exc:
        raise SweepNotFound(f"{source}: {exc}") from None
    db = local_sqlite_path(uri)
    if db is not None and not db.exists():
        raise SweepNotFound(f"{source}: no tracking store at {db}; run a sweep first or pass --tracking-uri")
    try:
        check_reachable(uri)
    except TrackingError as exc:
        raise SweepNotFound(f"{source}: {exc}") from None


# ---------------------------------------------------------------- provenance
_VERSION_TAGS = {"bvae.version.torch": "torch", "bvae.version.ray": "ray", "bvae.version.optuna": "optuna",
                 "bvae.version.mlflow": "mlflow", TAG_PACKAGE_VERSION: "bvae-sweeps"}  # fmt: skip
_PACKAGE_DIR = Path(__file__).resolve().parent


def package_commit(package_dir: Path = _PACKAGE_DIR) -> str | None:
    """The git commit (HEAD) of *this package's* source, when it runs from a git checkout that tracks it (an
    editable install); None for an installed wheel — never the commit of whatever directory the driver runs in."""

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True, timeout=10,
                                  check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None

    tracked = git("ls-files", "--error-unmatch", "__init__.py")
    if tracked is None or tracked.returncode != 0:
        return None  # not a checkout of this package (e.g. site-packages inside someone else's repository)
    head = git("rev-parse", "HEAD")
    commit = head.stdout.strip() if head is not None else ""
    return commit if head is not None and head.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def provenance_tags() -> dict[str, str]:
    """Versions of Python, this package and the stack, and this package's git commit when known."""
    tags = {"bvae.version.python": platform.python_version()}
    for tag, dist in _VERSION_TAGS.items():
        try:
            tags[tag] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    commit = package_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


# ---------------------------------------------------------------- run look-ups
def _tag_eq(key: str, value: str) -> str | None:
    """A search filter ``tags.`key` = 'value'``, or None when the value cannot be quoted in MLflow's grammar."""
    if "'" in value or "\\" in value:
        return None
    return f"tags.`{key}` = '{value}'"


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "", page_size: int = 1000) -> list[Run]:
    """Every active run matching ``filter_string``, all pages (MLflow returns at most 1,000 a page)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=page_size, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def search_by_tags(client: MlflowClient, experiment_ids: list[str], tags: Mapping[str, str]) -> list[Run]:
    """Active runs whose tags equal ``tags`` (values quoted in the filter where MLflow allows it, checked after)."""
    if not experiment_ids:
        return []
    clauses = [c for c in (_tag_eq(k, v) for k, v in tags.items()) if c is not None]
    runs = search_all(client, experiment_ids, " and ".join(clauses))
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


def _oldest(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def sweep_parent(parents: list[Run]) -> Run | None:
    """THE rule for which parent run is a sweep: per sweep key the oldest parent (a duplicate made by a race is
    never continued), and among sweeps sharing a name the one started last."""
    if not parents:
        return None
    by_key: dict[str, list[Run]] = {}
    for run in parents:
        by_key.setdefault(run.data.tags.get(TAG_SWEEP_KEY, run.info.run_id), []).append(run)
    firsts = [_oldest(group) for group in by_key.values()]
    return max(firsts, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _parents(runs: list[Run]) -> list[Run]:
    return [r for r in runs if TAG_PARENT not in r.data.tags and TAG_SWEEP in r.data.tags]


def _active_experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage != "active":
            names = sorted(e.name for e in client.search_experiments())
            raise SweepNotFound(f"--experiment: no MLflow experiment {experiment!r} in {client.tracking_uri}"
                                f"{_suggest(experiment, names, 'experiments')}")  # fmt: skip
        return [found.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def find_parent_run(client: MlflowClient, experiment_name: str, sweep_key: str) -> Run | None:
    """The parent run of the sweep ``sweep_key`` in ``experiment_name``, else None (see :func:`sweep_parent`)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    return sweep_parent(_parents(search_by_tags(client, [experiment.experiment_id], {TAG_SWEEP_KEY: sweep_key})))


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The (active) child runs of a parent run, oldest first."""
    parent = client.get_run(parent_run_id)
    runs = search_by_tags(client, [parent.info.experiment_id], {TAG_PARENT: parent_run_id})
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


@dataclass(frozen=True)
class SweepRef:
    """Where a sweep's runs are: the parent run and its experiment."""

    name: str
    parent_run_id: str
    experiment_id: str


def sweep_names(client: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """The names of the sweeps in these experiments (all pages), sorted."""
    return sorted({r.data.tags[TAG_SWEEP] for r in _parents(search_all(client, experiment_ids,
                                                                         f"tags.`{TAG_SWEEP}` != ''"))})  # fmt: skip


def _suggest(name: str, known: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(known[:20]) + (f", … ({len(known)} in all)" if len(known) > 20 else "")
    return f"{hint} ({what} in the store: {listing or 'none'})"


def find_sweep(client: MlflowClient, sweep: str, experiment: str | None = None, sweep_key: str | None = None) -> SweepRef:
    """A sweep by parent run id, by ``sweep_key`` (a spec file's identity) or by name (the ``bvae.sweep`` tag of
    parent runs; :func:`sweep_parent` chooses among several). Raises :class:`SweepNotFound` naming the sweeps the
    store holds, with the closest match."""
    if re.fullmatch(r"[0-9a-f]{32}", sweep):
        try:
            run = client.get_run(sweep)
        except Exception:  # noqa: BLE001 - MLflow raises its own error types for a missing run
            run = None
        if run is not None and TAG_SWEEP in run.data.tags and TAG_PARENT not in run.data.tags:
            return SweepRef(run.data.tags[TAG_SWEEP], run.info.run_id, run.info.experiment_id)
    if "'" in sweep or "\\" in sweep:
        raise SweepNotFound(f"SWEEP: a sweep name cannot contain a quote or a backslash, got {sweep!r}")
    experiment_ids = _active_experiment_ids(client, experiment)
    parents = _parents(search_by_tags(client, experiment_ids, {TAG_SWEEP: sweep})) if experiment_ids else []
    if sweep_key is not None:
        keyed = [r for r in parents if r.data.tags.get(TAG_SWEEP_KEY) == sweep_key]
        parents = keyed or parents
    chosen = sweep_parent(parents)
    if chosen is None:
        known = sweep_names(client, experiment_ids) if experiment_ids else []
        raise SweepNotFound(f"SWEEP: no sweep named {sweep!r} in {client.tracking_uri}"
                            f"{_suggest(sweep, known, 'sweeps')}")  # fmt: skip
    return SweepRef(chosen.data.tags[TAG_SWEEP], chosen.info.run_id, chosen.info.experiment_id)
