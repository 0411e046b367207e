"""Build and run, resume or submit a Ray Tune sweep from a :class:`~sweeps.spec.SweepSpec`."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bvae_core.config import ConfigError

from .spec import SpecError, SweepSpec

#: No calls home, and Ray kept on loopback (docs/operations.md "Keep every byte on this machine").
LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Snapshot the experiment at every controller step, so that a trial is in Tune's saved state before it can
    # report: a driver killed at any moment then resumes every trial that has an MLflow run.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # we snapshot on purpose (num_to_keep=2)
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_MAX_PENDING_TRIALS_PG": "1",
}


@dataclass
class SweepOutcome:
    """What a finished ``bvae sweep run/resume`` returns."""

    experiment_path: str
    tracking_uri: str
    parent_run_id: str | None
    rows: list  # progress.TrialRow per trial
    study: Any = None  # the Optuna study (when the search ran in this process)
    experiment_id: str | None = None
    interrupted: bool = False  # Ctrl+C or `bvae job stop`: trials were cut off; `bvae sweep resume` continues them


def storage_root(spec: SweepSpec) -> str:
    """Absolute local folder or URI (s3://…) under which Tune keeps the sweep's experiment."""
    path = spec.storage.path
    return path if "://" in path else str(Path(path).expanduser().resolve())


def storage_filesystem(spec: SweepSpec):
    """The file system Tune keeps the sweep in: for a folder, one that writes each file whole or not at all (a driver
    killed mid-save must not leave a truncated state for ``resume``: :mod:`sweeps.atomic_storage`); for a URI
    (s3://…) None, Tune's own — an object store publishes an object whole."""
    if "://" in spec.storage.path:
        return None
    from .atomic_storage import atomic_local_filesystem

    return atomic_local_filesystem()


def experiment_path(spec: SweepSpec) -> str:
    return f"{storage_root(spec).rstrip('/')}/{spec.name}"


def sweep_key(spec: SweepSpec) -> str:
    """A stable identity of the sweep across driver restarts: where its Tune experiment lives."""
    return experiment_path(spec)


def init_ray(spec: SweepSpec) -> None:
    import ray

    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    if not os.environ.get("BVAE_DEBUG"):  # a trial's error is one progress line (its run's bvae.reason too)
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # not Ray's traceback
    if ray.is_initialized():
        return
    if spec.ray.address is None:
        ray.init(num_cpus=spec.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=True, logging_level="WARNING", log_to_driver=False)  # fmt: skip
    else:
        ray.init(address=spec.ray.address, log_to_driver=False, logging_level="WARNING")


def cluster_fits(spec: SweepSpec) -> int:
    """Ray trials the cluster's CPUs/GPUs fit at once (one-thread trials packed one per core)."""
    import ray

    total = ray.cluster_resources()
    fits = int(total.get("CPU", 1) // spec.resources.cpu)
    if spec.resources.gpu > 0:
        fits = min(fits, int(total.get("GPU", 0) // spec.resources.gpu) or 1)
    return max(1, fits)


def parallel_trials(spec: SweepSpec) -> int:
    """Ray trials the sweep may run at once: ``search.concurrency``, else as many as the cluster fits."""
    return spec.search.concurrency if spec.search.concurrency is not None else cluster_fits(spec)


def trials_at_once(spec: SweepSpec, concurrency: int) -> int:
    """What the first line says runs at once: the searcher's limit and, on the embedded Ray, what this machine's
    cores fit (``search.concurrency: 8`` on one core said "8 at a time"; a cluster may add nodes as trials wait)."""
    return concurrency if spec.ray.address is not None else min(concurrency, cluster_fits(spec))


def default_concurrency(spec: SweepSpec) -> int:
    """Ray trials at once (:func:`parallel_trials`), never more than there are trials. Not fewer with cohorts:
    configurations that cannot share a model (another latent size, schedule kind, …) form cohorts of their own, which
    must not wait for the first to end while a core or GPU idles; a slot no cohort fills costs nothing."""
    from .space import planned_trials

    return max(1, min(parallel_trials(spec), planned_trials(spec)))


def _rows_from_results(results, spec: SweepSpec) -> list:
    from .outcome import trial_outcome
    from .progress import TrialRow

    from .cohorts import ended_early, is_cohort, member_id, member_result

    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id", Path(result.path).name))
        config = result.config or {}
        entries = ([(member_id(trial_id, j), m["params"], member_result(metrics, j)) for j, m in enumerate(config["members"])]
                   if is_cohort(config) else [(trial_id, config, metrics)])  # fmt: skip
        for row_id, params, own in entries:
            # a cohort's error is not that of a member that had ended before it (stopped, or its loss non-finite)
            errored = result.error is not None and not (is_cohort(config) and ended_early(own))
            own = own or {}
            row = TrialRow(row_id, _shown_params(spec, params), steps=_trial_steps(spec, params))
            row.step = int(own.get("step", 0) or 0)
            row.rate, row.distortion = own.get("rate", math.nan), own.get("distortion", math.nan)
            row.status = trial_outcome(own, error=errored, objectives=spec.search.objectives).label
            rows.append(row)
    return rows


def _shown_params(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    return spec.applied_params(dict(params))


def _trial_steps(spec: SweepSpec, params: dict[str, Any]) -> int:
    try:
        return spec.trial_config(dict(params)).train.steps
    except Exception:  # noqa: BLE001 - a display figure never costs the summary: the base config's steps instead
        return spec.base_config.train.steps


def build_callbacks(spec: SweepSpec, tracking_uri: str, total_trials: int) -> list:
    """The driver's Tune callbacks, in order (runs end before the frontier reads them): MLflow tracking, the live
    frontier, the progress lines. Built afresh by ``resume`` too, so a resumed sweep logs where it is told to."""
    from functools import partial

    from .live_frontier import LiveFrontier
    from .progress import SweepProgress
    from .tracking import MLflowTracking

    return [MLflowTracking(tracking_uri, spec.experiment, spec.name, sweep_key(spec), spec.raw),
            LiveFrontier(tracking_uri, spec.raw, sweep_key(spec)),
            SweepProgress(total_trials, spec.base_config.train.steps, show_params=partial(_shown_params, spec),
                          trial_steps=partial(_trial_steps, spec))]  # fmt: skip


def tune_callbacks(spec: SweepSpec, callbacks: list, *, restored: bool = False) -> list:
    """What Tune is given: the callbacks themselves, or with fused cohorts each wrapped to see one trial per member
    (a plain trial passes through unchanged). A restored sweep's are always wrapped: its trials may be cohorts
    whatever ``search.cohort`` says now (a resumed ``auto``, or a value changed on resume, which a resumed search
    does not follow)."""
    if spec.search.cohort == 1 and not restored:
        return callbacks
    from .cohorts import MemberFanOut

    return [MemberFanOut(c) for c in callbacks]


class SweepBusy(ConfigError):
    """Another process on this machine drives the sweep (exit 2: nothing was started)."""


@contextlib.contextmanager
def sweep_lock(spec: SweepSpec, resume: bool = False) -> Iterator[None]:
    """Hold the sweep's lock (``.NAME.lock`` in a local storage folder) while a driver runs it: a second ``bvae
    sweep run``/``resume`` of the same sweep stops with one line instead of training its trials twice. Object stores
    (s3://) have no such lock — on a cluster, a sweep's job id keeps it to one driver —, nor do folders where no lock
    can be taken (no ``fcntl``, a lock file of another user, a mount without locks): those run unlocked."""
    path = spec.storage.path
    for scheme in ("file://", "local://"):
        path = path.removeprefix(scheme)
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        fcntl = None  # type: ignore[assignment]
    root = Path(path).expanduser().absolute()
    if "://" in path or fcntl is None or (resume and not root.is_dir()):  # (no sweep to resume there: said next)
        yield
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{spec.name}.lock", "a+")
    except OSError:
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise SweepBusy(f"name: sweep {spec.name!r} is being run by another process (pid {holder}, on this "
                            f"machine or one sharing {root}); wait for it to end, or stop it (Ctrl+C there), then "
                            f"resume") from None  # fmt: skip
        except OSError:  # a file system without locks (some network mounts): run unlocked, as before
            yield
            return
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_sweep(spec: SweepSpec, *, resume: bool = False, tracking_uri: str | None = None) -> SweepOutcome:
    """Run (or, with ``resume``, continue) the sweep; return when every trial has ended.

    If anything fails after the parent run exists (Ray does not start, the Tuner raises, Ctrl+C), the sweep's runs
    are ended — KILLED for an interruption, FAILED otherwise — never left RUNNING; ``bvae sweep resume`` continues
    them."""
    from .preflight import preflight
    from .store import resolve_given_tracking_uri

    uri, _ = resolve_given_tracking_uri(tracking_uri, spec.tracking.uri, Path.cwd())
    path = experiment_path(spec)
    notes = preflight(spec, uri, resume)  # data, model, tracking, Ray address, storage: before Tune reads the storage
    with sweep_lock(spec, resume):  # one driver per sweep on this machine: two at once trained its trials twice
        return _run_checked(spec, resume, uri, path, notes)


def _run_checked(spec: SweepSpec, resume: bool, uri: str, path: str, notes: list[str]) -> SweepOutcome:
    """:func:`run_sweep` once its input has passed the preflight and it holds the sweep's lock."""
    from ray import tune

    from .atomic_storage import unreadable_experiment_state
    from .store import FAILED, KILLED
    from .cohort_size import resolve_cohort
    from .search import build_scheduler, build_searcher, fused, optuna_study
    from .space import grid_size, planned_trials
    from .started_spec import check_resume_spec, save_started_spec
    from .state_saves import serialize_state_saves
    from .trainable import train_trial

    filesystem = storage_filesystem(spec)
    exists = tune.Tuner.can_restore(path, storage_filesystem=filesystem)
    if resume and not exists:
        raise SpecError(f"storage.path: no sweep {spec.name!r} to resume at {path}; start it with bvae sweep run")
    unreadable = unreadable_experiment_state(path, filesystem) if resume else None
    if unreadable:  # Tune would log it and start the sweep over, beside the trials already run and tracked
        raise SpecError(f"storage.path: the sweep's saved state {unreadable}; it was cut off mid-write, so nothing "
                        f"was started. Move that file aside to resume from the state saved before it, if any")  # fmt: skip
    if not resume and exists:
        raise SpecError(f"name: a sweep {spec.name!r} already exists at {path}; continue it with "
                        f"`bvae sweep resume`, or give this one another name (--set name=…)")  # fmt: skip
    resume_notes = check_resume_spec(spec, path, filesystem, uri) if resume else []  # the sweep started, not another
    trials = planned_trials(spec)
    callbacks = build_callbacks(spec, uri, trials)
    tracking, live = callbacks[0], callbacks[1]
    try:
        with ThreadPoolExecutor(1) as pool:
            # The driver's own setup (the tracking store — a fresh one creates its tables —, the parent run, the
            # frontier's reference point) runs while Ray starts: seconds before the first trial, on every sweep.
            prepared = pool.submit(_prepare_callbacks, tracking, live)
            try:
                init_ray(spec)
            finally:
                prepared.result()  # a tracking store that cannot be used ends the sweep here, before any trial
        choice = None
        if not resume:  # search.cohort: auto → a number, from the cluster (a resumed sweep keeps its searcher's)
            spec, choice = resolve_cohort(spec, min(parallel_trials(spec), cluster_fits(spec)))  # trials truly at once
        trainable = tune.with_resources(tune.with_parameters(train_trial, spec=spec.raw),
                                        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})  # fmt: skip
        searcher = None
        if resume:
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=filesystem)  # fmt: skip
            _update_restored_tuner(tuner, tune_callbacks(spec, callbacks, restored=True), path, filesystem)
            print(f"sweep {spec.name}: resuming from {path}; tracking {uri}", file=sys.stderr, flush=True)
            for note in resume_notes:
                print(f"note: {note}", file=sys.stderr, flush=True)
        else:
            concurrency = default_concurrency(spec)
            searcher = build_searcher(spec, concurrency)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=build_scheduler(spec),
                                            num_samples=-1 if fused(spec) else trials,  # cohorts: until the searcher ends
                                            reuse_actors=True,
                                            trial_dirname_creator=lambda trial: trial.trial_id),  # fmt: skip
                run_config=tune.RunConfig(
                    name=spec.name,
                    storage_path=storage_root(spec),
                    storage_filesystem=filesystem,
                    callbacks=tune_callbacks(spec, callbacks),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                    verbose=0,
                ),
            )
            at_most = trials_at_once(spec, concurrency)
            at_once = (f"{at_most} at a time" if spec.search.cohort == 1 else
                       f"in fused cohorts of up to {spec.search.cohort}, up to {at_most} "
                       f"cohort{'s' if at_most > 1 else ''} at a time"
                       + (", each member stopped early on its own" if spec.search.scheduler else ""))  # fmt: skip
            if choice is not None:
                at_once += f" (search.cohort auto: {choice.size}, {choice.why})"
            fewer = f" (the grid holds {trials}; search.trials asked {spec.search.trials})" if trials < spec.search.trials else ""
            if spec.search.sampler == "grid" and grid_size(spec) > trials:
                fewer = f" (of the grid's {grid_size(spec)} combinations: search.trials)"
            print(f"sweep {spec.name}: {trials} trial{'s' if trials != 1 else ''}{fewer}, {at_once}, sampler {spec.search.sampler}; "
                  f"tracking {uri}; storage {path}", file=sys.stderr, flush=True)  # fmt: skip
            for note in notes:
                print(f"note: {note}", file=sys.stderr, flush=True)
            save_started_spec(spec, path, filesystem, uri)
        serialize_state_saves()  # no save rewrites the state while Tune copies it to storage
        results = tuner.fit()
    except KeyboardInterrupt:
        tracking.close(KILLED)
        raise
    except BaseException:
        tracking.close(FAILED)
        raise
    from .outcome import COMPLETED, ERROR, INTERRUPTED
    from .outcome import FAILED as FAILED_OUTCOME  # not the MLflow run status above

    study = optuna_study(searcher) if searcher is not None else None  # a restored searcher lives inside Tune
    rows = _rows_from_results(results, spec)
    if tracking.interrupted:  # a trial cut off, or never started, did not fail: a resume continues it
        for row in rows:
            never_ran = (row.status == FAILED_OUTCOME.label and not row.step
                         and row.trial_id not in tracking.started_trials())  # fmt: skip
            if row.status not in (COMPLETED.label, ERROR.label) and (row.trial_id in tracking.cut_off or never_ran):
                row.status = INTERRUPTED.label
    return SweepOutcome(path, uri, tracking.parent_run_id, rows, study, tracking.experiment_id, tracking.interrupted)


def _update_restored_tuner(tuner, callbacks: list, path: str, filesystem) -> None:
    """``Tuner.restore`` unpickles the first run's callbacks (and so its tracking URI): use this driver's instead.
    And tell the restored search where Tune restores its trials from, to agree with them
    (:class:`sweeps.searcher_state.SweepSearchGenerator`; a sweep started before it existed has none to tell).
    Ray has no public hook for either: this reaches into the restored tuner and says so when Ray changes."""
    from .searcher_state import SweepSearchGenerator

    try:
        run_config, search = tuner._local_tuner.get_run_config(), tuner._local_tuner._tune_config.search_alg
    except AttributeError as exc:  # pragma: no cover - a Ray upgrade moved it
        raise RuntimeError(f"this Ray version's Tuner has no restored run config or search to update ({exc}); pin "
                           f"ray as in requirements.txt") from exc  # fmt: skip
    run_config.callbacks = callbacks
    if isinstance(search, SweepSearchGenerator):
        search.restored_from = (path, filesystem)


def _prepare_callbacks(tracking, live) -> None:
    tracking.setup()
    live.setup()


def ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    """Where to look at this sweep: a server's experiment page in the model-training view (MLflow 3's UI opens on its
    GenAI view otherwise), or the command that opens the UI on a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        from .store import experiment_url

        url = experiment_url(tracking_uri, experiment_id) if experiment_id else None
        return f"open {url or tracking_uri} in a browser"
    return (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000, then open "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id or ''}?workflowType=machine_learning")
