"""A sweep as a Ray job on a cluster: ``bvae sweep submit|status|logs|stop`` through the Ray Jobs API.

- ``submit`` uploads this project's packages (``bvae_core``, ``sweeps``) and the resolved spec as the job's working
  directory and runs the sweep's driver on the cluster (``python -m sweeps.jobs drive``), which *runs* the sweep, or
  *resumes* it when its Tune experiment already exists in ``storage.path``.
- The submission id is derived from the sweep's identity (its storage path and name): a second ``submit`` of a
  sweep whose job is running says so (and follows it with ``--wait``) instead of starting another driver; one whose
  job ended (stopped, failed, a lost head) is submitted again as the next attempt (``…-2``, ``…-3``), which resumes
  it from its storage. A finished sweep is left alone.
- ``stop`` ends the driver with SIGINT (Tune's own interrupt: the experiment state is saved, the runs end
  ``KILLED``), so that the next ``submit`` resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ray.job_submission import JobDetails, JobSubmissionClient

    from .spec import SweepSpec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
SPEC_FILE = "bvae_job_spec.yaml"
LIVE = ("PENDING", "RUNNING")
#: Seconds the driver has to end cleanly after ``stop`` (Tune saves its state, the tracking callback ends the runs)
#: before Ray kills it.
STOP_GRACE_S = 120
#: What a submitted driver needs in its environment (the job's ``runtime_env``; its trials inherit it).
JOB_ENV = {
    "RAY_JOB_STOP_SIGNAL": "SIGINT",  # Tune's interrupt, not a SIGTERM that skips saving the experiment
    "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
    "PYTHONUNBUFFERED": "1",  # the job's log streams as it is written
}
META_SWEEP, META_KEY, META_ATTEMPT = "bvae.sweep", "bvae.sweep_key", "bvae.attempt"


# ---------------------------------------------------------------- identity
def submission_base(name: str, key: str) -> str:
    """The first attempt's submission id: the sweep's name and a digest of its identity (storage path + name)."""
    return f"bvae-{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def submission_id(name: str, key: str, attempt: int) -> str:
    base = submission_base(name, key)
    return base if attempt == 1 else f"{base}-{attempt}"


# ---------------------------------------------------------------- parser
def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="http://HOST:8265",
                   help=f"the cluster's Jobs API, i.e. its dashboard (default: $RAY_API_SERVER_ADDRESS, else "
                        f"$RAY_ADDRESS when http(s), else {DEFAULT_ADDRESS}; `ray dashboard ray_cluster.yaml` "
                        f"forwards a cluster's to it)")  # fmt: skip


def add_job_verbs(verbs: argparse._SubParsersAction) -> None:
    """Register ``submit``, ``status``, ``logs`` and ``stop`` on the ``bvae sweep`` sub-parser."""
    s = verbs.add_parser("submit", help="run a sweep as a Ray job on a cluster",
                         description="Upload this project and the spec as a Ray job and run (or resume) the sweep's "
                                     "driver on the cluster. Submitting a sweep that is running does not start it "
                                     "twice; submitting one whose job ended resumes it from its storage.")  # fmt: skip
    s.add_argument("spec", help="sweep spec (YAML); storage.path must be s3://… (or a path every node shares)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec value, e.g. --set search.trials=64")
    _add_address(s)
    s.add_argument("--tracking-uri", help="MLflow tracking URI the cluster reaches (default: the spec's, else "
                                          "$MLFLOW_TRACKING_URI here, else the cluster's $MLFLOW_TRACKING_URI)")  # fmt: skip
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the driver and its trials (repeatable), e.g. "
                        "AWS_ENDPOINT_URL=http://… for an S3-compatible store")  # fmt: skip
    s.add_argument("--wait", action="store_true", help="stream the job's output until it ends; exit with its outcome")
    s.set_defaults(func=cmd_submit)
    for verb, text in (("status", "the sweep's jobs on the cluster and their state"),
                       ("logs", "the output of the sweep's latest job"),
                       ("stop", "stop the sweep's running job cleanly (runs end KILLED; submit again to resume)")):  # fmt: skip
        v = verbs.add_parser(verb, help=text, description=text)
        v.add_argument("sweep", help="sweep name or the sweep's spec file")
        v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="with a spec file: the --set values the sweep was submitted with (they may name "
                            "another storage path or name)")  # fmt: skip
        _add_address(v)
        if verb == "logs":
            v.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
        v.set_defaults(func={"status": cmd_status, "logs": cmd_logs, "stop": cmd_stop}[verb])


# ---------------------------------------------------------------- client side
#: Where the Jobs API address comes from when ``--address`` is not given, in this order (http(s) values only).
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def resolve_address(address: str | None) -> str:
    """``--address``, else the first http(s) value of :data:`ADDRESS_VARIABLES`, else :data:`DEFAULT_ADDRESS`."""
    if address:
        return address
    for var in ADDRESS_VARIABLES:
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    """Unset the environment variables ``names`` for the duration of the block, then restore them."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> JobSubmissionClient:
    """A Jobs API client, or a one-line ``UsageError`` naming ``--address`` when nothing answers there."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    if not address.startswith(("http://", "https://")):
        raise UsageError(f"--address: expected the cluster's dashboard as http://HOST:8265, got {address!r}")
    try:
        with _without_env(*ADDRESS_VARIABLES):  # Ray lets them override the address given: here the resolved one wins
            return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - ConnectionError, or an HTTP error from something that is not Ray
        raise UsageError(f"--address: no Ray Jobs API answers at {address} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); start the cluster or forward its dashboard "
                         f"(`ray dashboard ray_cluster.yaml`)") from None  # fmt: skip


def sweep_jobs(client: JobSubmissionClient, *, key: str | None = None, name: str | None = None) -> list[JobDetails]:
    """The jobs of one sweep (by its identity ``key`` or its ``name``), oldest first."""
    jobs = []
    for job in client.list_jobs():
        meta = job.metadata or {}
        if (key is not None and meta.get(META_KEY) == key) or (key is None and meta.get(META_SWEEP) == name):
            jobs.append(job)
    return sorted(jobs, key=lambda j: (j.start_time or 0, j.submission_id or ""))


def _status(job: JobDetails) -> str:
    return getattr(job.status, "value", str(job.status))


def check_cluster_spec(spec: SweepSpec, tracking_uri: str | None) -> str | None:
    """Refuse what cannot work on a cluster; return the tracking URI to hand the driver (None: the cluster's
    ``$MLFLOW_TRACKING_URI``)."""
    from .store import tracking_uri_given

    path = spec.storage.path
    if "://" not in path and not os.path.isabs(os.path.expanduser(path)):
        raise UsageError(f"storage.path: a sweep on a cluster keeps its checkpoints where every node and the next "
                         f"driver reach them: give s3://bucket/prefix (or an absolute path on a shared filesystem), "
                         f"got {path!r}")  # fmt: skip
    uri, _ = tracking_uri_given(tracking_uri, spec.tracking.uri)
    if uri is None:
        return None
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https", "postgresql", "mysql", "mssql", "databricks") or uri.startswith("sqlite:////"):
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    wins = (f" from the spec, which wins over $MLFLOW_TRACKING_URI ({env}): pass --tracking-uri \"$MLFLOW_TRACKING_URI\""
            if not tracking_uri and spec.tracking.uri and env and env != uri else "")  # fmt: skip
    raise UsageError(f"tracking.uri: a sweep on a cluster needs a tracking store its nodes reach, e.g. "
                     f"http://mlflow.internal:5000 (infra/), got {uri!r}{wins}")  # fmt: skip


def check_started_spec(spec: SweepSpec) -> None:
    """A sweep already in its storage resumes with the spec it was started with: refuse another here (SpecError,
    exit 2), not in the driver, where it cost a job attempt that then reads FAILED. Only where this machine is set
    up to read the storage (a shared folder; S3 with credentials or an endpoint here — often they live on the
    cluster only); anything else, and any failure to read, is left to the driver's own check."""
    from .runner import experiment_path, storage_filesystem
    from .spec import SpecError
    from .started_spec import check_resume_spec

    path = spec.storage.path
    if "://" in path and not (path.startswith("s3://") and _s3_set_up_here()):
        return
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # a laptop is no EC2 instance: no metadata probes
    try:
        check_resume_spec(spec, experiment_path(spec), storage_filesystem(spec))
    except SpecError:
        raise
    except Exception:  # noqa: BLE001 - unreadable from here (credentials, endpoint, network): the driver checks
        return


def _s3_set_up_here() -> bool:
    """Whether this machine names S3 credentials or an endpoint (environment or ~/.aws)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    return any(os.environ.get(n) for n in names) or (Path.home() / ".aws" / "credentials").exists()


def stage_working_dir(spec: SweepSpec, tracking_uri: str | None) -> Path:
    """A temporary folder with this project's packages and the resolved spec: the job's ``working_dir``."""
    import bvae_core
    import yaml

    from . import __file__ as sweeps_init

    stage = Path(tempfile.mkdtemp(prefix="bvae-job-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (Path(bvae_core.__file__).parent, Path(sweeps_init).parent):
        shutil.copytree(package, stage / package.name, ignore=ignore)
    raw = dict(spec.raw)
    raw["ray"] = {"address": "auto"}  # the driver joins the cluster it runs on
    if tracking_uri is not None:
        raw["tracking"] = {**raw.get("tracking", {}), "uri": tracking_uri}
    (stage / SPEC_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    return stage


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise UsageError(f"--env: expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def cmd_submit(args: argparse.Namespace) -> int:
    from .runner import sweep_key
    from .spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    uri = check_cluster_spec(spec, args.tracking_uri)
    env = {**JOB_ENV, **_env_pairs(args.env)}
    key = sweep_key(spec)
    client = connect(args.address)
    jobs = sweep_jobs(client, key=key)
    live = [j for j in jobs if _status(j) in LIVE]
    if live:
        job = live[-1]
        print(f"sweep {spec.name} is already {_status(job).lower()} as job {job.submission_id} on "
              f"{client.get_address()}; not submitted again", file=sys.stderr)  # fmt: skip
        return follow(client, job.submission_id) if args.wait else 0
    if jobs and _status(jobs[-1]) == "SUCCEEDED":
        where = shlex.quote(uri) if uri else "URI-OF-THE-CLUSTER'S-TRACKING-SERVER"
        print(f"sweep {spec.name} already finished as job {jobs[-1].submission_id}; nothing to do (see it with "
              f"`bvae frontier {spec.name} --tracking-uri {where}`, or give a new sweep another name: "
              f"--set name=…)", file=sys.stderr)  # fmt: skip
        return 0
    if jobs:  # a resubmission: its spec against the one kept in the sweep's storage (after the cluster answered)
        check_started_spec(spec)
    taken = {j.submission_id for j in jobs}
    attempt = len(jobs) + 1
    while submission_id(spec.name, key, attempt) in taken:
        attempt += 1
    job_id = submission_id(spec.name, key, attempt)
    stage = stage_working_dir(spec, uri)
    entrypoint = f"exec python -m sweeps.jobs drive {SPEC_FILE}"
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                          runtime_env={"working_dir": str(stage), "env_vars": env},
                          metadata={META_SWEEP: spec.name, META_KEY: key, META_ATTEMPT: str(attempt)})  # fmt: skip
    except RuntimeError as e:
        if "already exists" not in str(e):
            raise
        print(f"sweep {spec.name}: job {job_id} was submitted meanwhile (by another submit); not submitted again",
              file=sys.stderr)  # fmt: skip
        return follow(client, job_id) if args.wait else 0
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    what = "submitted" if attempt == 1 else f"resubmitted (attempt {attempt}: resumes from {spec.storage.path})"
    print(f"sweep {spec.name} {what} as job {job_id} to {client.get_address()}", file=sys.stderr)
    print(f"watch it: bvae sweep status {spec.name} / bvae sweep logs {spec.name} --follow (--address "
          f"{client.get_address()}); stop it: bvae sweep stop {spec.name}", file=sys.stderr)  # fmt: skip
    print(job_id)
    if not args.wait:
        return 0
    code = follow(client, job_id)
    if code == 0 and uri:
        print_ui_link(uri, spec.experiment)
    return code


def print_ui_link(tracking_uri: str, experiment: str) -> None:
    """The sweep's experiment in the MLflow UI, opened on its runs (MLflow 3's default view is its GenAI one)."""
    from mlflow import MlflowClient

    from .store import experiment_url

    try:
        found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - a link is a courtesy: never fail a finished sweep over it
        return
    url = experiment_url(tracking_uri, found.experiment_id) if found is not None else None
    if url:
        print(f"browse it: {url}", file=sys.stderr)


def follow(client: JobSubmissionClient, job_id: str) -> int:
    """Stream the job's output until it ends; 0 when it succeeded, 2 when its driver refused the input (exit 2),
    1 otherwise. Ctrl+C detaches (the job goes on)."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\ndetached from job {job_id}; it goes on (bvae sweep stop to end it)", file=sys.stderr)
        return 130
    status = _wait_terminal(client, job_id, 60)
    print(f"job {job_id}: {status}", file=sys.stderr)
    if status == "SUCCEEDED":
        return 0
    return 2 if getattr(client.get_job_info(job_id), "driver_exit_code", None) == 2 else 1  # 2: input refused


def job_message(job: JobDetails, width: int = 160) -> str:
    """A job's message in one line for ``status``: for a failed driver, its exit code and its last output line
    (its error; Ray's message is a fixed text, then the log's tail), else the message's first line."""
    lines = [line.strip() for line in (job.message or "").splitlines() if line.strip()]
    code = getattr(job, "driver_exit_code", None)
    if code not in (None, 0) and len(lines) > 1:
        text = f"exit code {code}: {lines[-1]}"
    else:
        text = lines[0] if lines else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _wait_terminal(client: JobSubmissionClient, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_job_status(job_id)
        status = getattr(status, "value", str(status))
        if status not in LIVE or time.monotonic() > deadline:
            return status
        time.sleep(1)


def _find(args: argparse.Namespace) -> tuple[JobSubmissionClient, str, list[JobDetails]]:
    """(client, sweep name, its jobs) for SWEEP given as a name or a spec file; UsageError when it has none."""
    is_spec = args.sweep.endswith((".yaml", ".yml"))
    if args.overrides and not is_spec:
        raise UsageError(f"--set: applies to a spec file, not to the sweep name {args.sweep!r}; pass the spec file "
                         f"the sweep was submitted with")  # fmt: skip
    spec = None
    if is_spec:
        from .spec import load_spec

        spec = load_spec(args.sweep, args.overrides)  # before connecting: a spec mistake is named first
    client = connect(args.address)
    if spec is not None:
        from .runner import sweep_key

        key = sweep_key(spec)
        name, jobs = spec.name, sweep_jobs(client, key=key)
        others = {(j.metadata or {}).get(META_KEY) for j in sweep_jobs(client, name=spec.name)} - {key}
        if not jobs and others:
            raise UsageError(f"sweep: no job of sweep {name!r} stored at {key} on {client.get_address()}, but "
                             f"{len(others)} of that name stored elsewhere ({', '.join(sorted(others))}); add the "
                             f"--set values it was submitted with, e.g. --set storage.path=…")  # fmt: skip
    else:
        name, jobs = args.sweep, sweep_jobs(client, name=args.sweep)
        keys = {(j.metadata or {}).get(META_KEY) for j in jobs}
        if len(keys) > 1:
            raise UsageError(f"sweep: {len(keys)} sweeps named {name!r} on {client.get_address()} "
                             f"({', '.join(sorted(keys))}); pass the sweep's spec file instead, with the --set "
                             f"values it was submitted with")  # fmt: skip
    if not jobs:
        raise UsageError(f"sweep: no job of a sweep {name!r} on {client.get_address()}; submit it with "
                         f"`bvae sweep submit SPEC --address {client.get_address()}`")  # fmt: skip
    return client, name, jobs


def _time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def cmd_status(args: argparse.Namespace) -> int:
    from .tables import format_table

    client, name, jobs = _find(args)
    rows = [[j.submission_id, (j.metadata or {}).get(META_ATTEMPT, ""), _status(j), _time(j.start_time),
             _time(j.end_time), job_message(j)] for j in jobs]  # fmt: skip
    print(f"sweep {name} on {client.get_address()}: {_status(jobs[-1])} (job {jobs[-1].submission_id})")
    print(format_table(["job", "attempt", "status", "started", "ended", "message"], rows))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client, _, jobs = _find(args)
    job_id = jobs[-1].submission_id
    if args.follow:
        return follow(client, job_id)
    sys.stdout.write(client.get_job_logs(job_id))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    client, name, jobs = _find(args)
    live = [j for j in jobs if _status(j) in LIVE]
    if not live:
        print(f"sweep {name}: no running job (the latest, {jobs[-1].submission_id}, is {_status(jobs[-1])})",
              file=sys.stderr)  # fmt: skip
        return 0
    job_id = live[-1].submission_id
    client.stop_job(job_id)
    print(f"sweep {name}: stopping job {job_id} (the driver saves the sweep's state and ends its runs)…",
          file=sys.stderr)  # fmt: skip
    status = _wait_terminal(client, job_id, STOP_GRACE_S + 30)
    print(f"job {job_id}: {status}; `bvae sweep submit SPEC` resumes the sweep from its storage", file=sys.stderr)
    return 0 if status not in LIVE else 1


# ---------------------------------------------------------------- cluster side: the job's driver
def continue_hint(name: str) -> str:
    """How a submitted sweep is continued (the driver's stand-in for ``bvae sweep resume …``)."""
    return f"bvae sweep submit SPEC (the spec of sweep {name!r}, with the --set values it was submitted with)"


def drive(spec_path: str) -> int:
    """The submitted job's entrypoint: resume the sweep when its Tune experiment exists in its storage, else run
    it. SIGINT (``stop``) and SIGTERM end it as Ctrl+C would: Tune saves its state and the runs end KILLED."""
    from . import cli
    from .runner import experiment_path, storage_filesystem
    from .spec import load_spec

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # Ray blocks SIGINT in the processes it starts
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    from . import quiet

    quiet.STOP_LINE = "bvae job driver: stop asked (bvae sweep stop); saving the sweep's state"  # no terminal here
    spec = load_spec(spec_path)
    argv = ["sweep", "run", spec_path]
    if spec.tracking.uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            print("bvae sweep: error: tracking.uri: neither the spec, `submit --tracking-uri` nor the cluster's "
                  "$MLFLOW_TRACKING_URI names a tracking server", file=sys.stderr)  # fmt: skip
            return 2
        argv += ["--tracking-uri", uri]
    from ray import tune

    from .preflight import PreflightError, check_storage

    try:
        check_storage(spec.storage.path)  # before Tune reads it: bad S3 keys are one line, not Tune's OSError
    except PreflightError as exc:
        print(f"bvae sweep: error: {exc}", file=sys.stderr)
        return 2
    if tune.Tuner.can_restore(experiment_path(spec), storage_filesystem=storage_filesystem(spec)):
        argv[1] = "resume"
    print(f"bvae job driver: {' '.join(argv)} (storage {experiment_path(spec)})", flush=True)
    os.environ[cli.CONTINUE_HINT_ENV] = continue_hint(spec.name)
    return cli.main(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.jobs", description="the driver of a submitted sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drive", help="run or resume the sweep of SPEC on the cluster this job runs on")
    d.add_argument("spec")
    args = parser.parse_args(argv)
    return drive(args.spec)


if __name__ == "__main__":
    try:
        sys.exit(_main())
    except KeyboardInterrupt:  # `bvae sweep stop` before the sweep started (its imports): nothing to save
        print("bvae job driver: stopped before the sweep started", file=sys.stderr)
        sys.exit(130)
