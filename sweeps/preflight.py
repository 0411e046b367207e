"""Everything a sweep checks before it starts anything — no Ray, no tracking run, no storage folder: the user's data
file and the model it must fit, the tracking server, the Ray address, a trial's resources on the embedded Ray, the
storage path. Each failure is one line naming the field or resource (:class:`PreflightError`, exit status 2), so a
mistake costs seconds, not a half-made sweep."""

from __future__ import annotations

import math
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from bvae_core.config import ConfigError

from .spec import SweepSpec


class PreflightError(ConfigError):
    """A resource the spec names cannot be used; one line naming the field and why."""


def check_data(spec: SweepSpec) -> Any:
    """Read each data file a trial can get once (``DataFileError`` names the file) and build the model on its
    examples, so that images of the wrong size for the architecture stop the sweep here, not in every trial: the
    base's file and those of every choice the search space offers. Returns the base's file dataset (None for
    generated data, whose config was validated with the model)."""
    from .space import corner_configs

    by_file: dict[tuple, list[Any]] = {}  # a file read once, whatever split (test_fraction, split_seed) a trial draws
    for config in [spec.base_config, *corner_configs(spec, ("dataset", "model", "train.n_eval"))]:
        if config.dataset.name == "file":
            by_file.setdefault(_file_identity(config.dataset), []).append(config)
    base = _file_identity(spec.base_config.dataset) if spec.base_config.dataset.name == "file" else None
    kept = None
    for identity, configs in by_file.items():  # one file in memory at a time (the base's is kept for the notes)
        first = configs[0].dataset
        dataset = _read_file(first)
        checked: set[str] = set()
        for config in configs:
            key = config.model_dump_json(include={"model", "train"})
            if key not in checked:
                checked.add(key)
                _check_file_config(spec, config, dataset)
        if identity == base:
            kept = dataset
        del dataset  # (the next file is read with this one let go)
    return kept


def _file_identity(dataset: Any) -> tuple:
    """What decides a data file's examples and factors (not its held-out split)."""
    return (dataset.path, dataset.image_column, tuple(dataset.factor_columns or ()), tuple(dataset.image_shape or ()))


def _read_file(options: Any) -> Any:
    from bvae_core.data import make_dataset

    return make_dataset(options.name, "cpu", **options.model_dump(exclude={"name"}))


def _where(spec: SweepSpec, *fields: str) -> str:
    """How an error names what set ``fields``: ``search.space: `` when the space can set one of them, else ``base.``."""
    from .space import touches

    return "search.space: " if any(touches(p, f) for p in spec.space for f in fields) else "base."


def _check_file_config(spec: SweepSpec, config: Any, dataset: Any) -> None:
    """One trial config on a data file: the likelihood, the held-out count, the factors the metrics need, the model
    built on its examples."""
    from bvae_core.data import check_likelihood_support
    from bvae_core.evaluation import check_held_out
    from bvae_core.models import build_model

    check_likelihood_support(dataset, config.model.likelihood.kind)
    try:
        check_held_out(dataset, config.train.n_eval)
    except ValueError as exc:
        raise PreflightError(f"{_where(spec, 'train.n_eval', 'dataset')}{exc}") from None
    if spec.eval.metrics and getattr(dataset, "factors", None) is None:
        raise PreflightError(f"eval.metrics: {config.dataset.path} holds no factors (an integer array 'factors' or "
                             f"'latents_classes' in a .npz, integer columns or dataset.factor_columns in Parquet)")  # fmt: skip
    if spec.eval.metrics:
        check_varying_factors(spec.eval.metrics, dataset)
    try:
        build_model(config.model.arch, dataset.example_shape, config.model.latent_dim, config.model.hidden)
    except ValueError as exc:
        raise PreflightError(f"{_where(spec, 'model.arch', 'model.hidden', 'dataset')}{exc} (data: "
                             f"{config.dataset.path})") from None  # fmt: skip


#: the varying factors each metric a file dataset allows needs (bvae_core.metrics: dci regresses every factor on the
#: codes and normalises over factors; mig and sap score each factor that varies)
_FACTORS_NEEDED = {"dci": 2, "mig": 1, "sap": 1}
#: metrics that compare the two most informative code dimensions (MIG's and SAP's gap) or need several (DCI)
_TWO_CODES = ("mig", "sap", "dci")
_TWO_CODES_WHY = {"mig": "it compares the two most informative", "sap": "it compares the two most predictive",
                  "dci": "its completeness is an entropy over the latent dimensions, which takes 2 or more"}  # fmt: skip


def check_varying_factors(metrics: list[str], dataset) -> None:
    """A data file's factors must vary enough for each metric, else every trial trains to its end and fails there."""
    factors = dataset.factors
    varying = [name for name, column in zip(dataset.factor_names, factors.T) if bool((column != column[0]).any())]
    for metric in metrics:
        needed = _FACTORS_NEEDED.get(metric, 1)
        if len(varying) < needed:
            raise PreflightError(f"eval.metrics: {metric} needs at least {needed} factor(s) that vary; {dataset.path} "
                                 f"has {len(varying)} ({', '.join(varying) or 'none'}) of "
                                 f"{', '.join(dataset.factor_names)}")  # fmt: skip


def check_latent_size(spec: SweepSpec) -> None:
    """MIG, SAP and DCI need two code dimensions or more: a space that can sample ``model.latent_dim`` 1 would
    train those trials to their end and fail them there."""
    needing = [m for m in spec.eval.metrics if m in _TWO_CODES]
    if not needing:
        return
    from .space import corner_configs

    least = min(c.model.latent_dim for c in corner_configs(spec, ("model.latent_dim",)))
    if least < 2:
        metric = needing[0]
        why = _TWO_CODES_WHY[metric]
        where = "can be" if _where(spec, "model.latent_dim").startswith("search") else "is"
        raise PreflightError(f"eval.metrics: {metric} needs at least 2 latent dimensions ({why}), and "
                             f"model.latent_dim {where} {least}")  # fmt: skip


def factors_note(spec: SweepSpec, data: Any) -> str | None:
    """A line for the sweep's start naming the factors a data file's metrics are scored against, and the integer
    Parquet columns not taken as factors (``data``: the file's dataset, :func:`check_data`)."""
    if data is None or not spec.eval.metrics or data.factors is None:
        return None
    rows = len(data.factors)
    sizes = [len(set(column.tolist())) for column in data.factors.T]
    described = [f"{name} ({size} value{'s' if size != 1 else ''}"
                 + (": one per row, an identifier?" if size == rows else ": constant, not scored" if size == 1 else "")
                 + ")" for name, size in zip(data.factor_names, sizes)]  # fmt: skip
    skipped = "; ".join(f"{column}: {why}" for column, why in data.skipped_columns.items())
    parquet = str(data.path).lower().endswith((".parquet", ".pq"))  # factor_columns chooses among its columns
    doubtful = parquet and (skipped or any(size in (1, rows) for size in sizes))
    return (f"eval.metrics: scored against the factors of {data.path}: {', '.join(described)}"
            + (f"; not a factor — {skipped}" if skipped else "")
            + ("; name the factors with base.dataset.factor_columns" if doubtful else ""))


def metric_points(spec: SweepSpec, file_rows: int | None) -> int | None:
    """The distinct points the disentanglement metrics draw from: factor combinations, or a data file's rows."""
    dataset = spec.base_config.dataset
    if dataset.name == "file":
        return file_rows
    if dataset.name == "blobs":
        return dataset.grid**2
    if dataset.name == "dsprites":
        from bvae_core.data.dsprites import DSprites

        return math.prod(DSprites.factor_sizes)
    return None  # no factors: no metrics (the spec refuses them)


def in_sample_note(spec: SweepSpec, file_rows: int | None) -> str | None:
    """A line for the sweep's start when the held-out metrics (dci/informativeness, sap) would mostly be tested on
    their own training points: a small data file or factor grid (``bvae_core.metrics.in_sample_share``)."""
    points = metric_points(spec, file_rows) if spec.eval.metrics else None
    if points is None:
        return None
    from bvae_core.metrics import in_sample_share

    share = in_sample_share(spec.eval.metrics, points, spec.eval.preset)
    if share < 0.1:
        return None
    held_out = [m for m in ("dci", "sap") if m in spec.eval.metrics]
    scores = " and ".join({"dci": "dci/informativeness", "sap": "sap"}[m] for m in held_out)
    return (f"eval.metrics: {', '.join(held_out)} test on points drawn like the training points, and the dataset has "
            f"only {points} distinct ones: about {share:.0%} of the test points were trained on, so {scores} "
            f"read{'s' if len(held_out) == 1 else ''} as in-sample fit (disentanglement_lib's protocol)")


def scheduler_note(spec: SweepSpec) -> str | None:
    """A line for the sweep's start when ``search.scheduler`` can stop nothing: ASHA's first rung
    (``grace_period`` evaluations) is at or past the last evaluation of every trial."""
    settings = spec.search.scheduler
    if settings is None:
        return None
    from .space import most_evaluations

    most = most_evaluations(spec)
    if settings.grace_period < most:
        return None
    return (f"search.scheduler: grace_period {settings.grace_period} ≥ the {most} evaluation{'s' if most > 1 else ''} "
            f"a trial makes at most (train.steps / train.eval_every), so no trial can be stopped early; lower "
            f"grace_period or evaluate more often (a smaller train.eval_every)")


def check_searched_fields_used(spec: SweepSpec) -> None:
    """A searched field no trial reads (β under a capacity schedule, ``model.hidden`` of a conv model) trains copies
    of one model as different trials: refused, naming why."""
    from .space import corner_configs

    for path in spec.space:
        configs = list(corner_configs(spec, (path, "objective.schedule", "model.arch")))
        reasons = [c.ignored_fields().get(path) for c in configs]
        if reasons and all(reasons):
            raise PreflightError(f"search.space.{path}: no trial uses it ({reasons[0]}); search what this sweep's "
                                 f"trials do read, or a setting that uses {path}")  # fmt: skip


def threads_note(spec: SweepSpec) -> str | None:
    """``train.threads`` above a trial's ``resources.cpu``: its threads share the cores Ray counts for it, so trials
    at once oversubscribe the machine (slower, not faster). Left out, a trial takes the cores Ray gives it."""
    from .space import corner_configs

    most = max((c.train.threads or 0) for c in corner_configs(spec, ("train.threads",)))
    if spec.resources.gpu == 0 and most > spec.resources.cpu:
        return (f"train.threads {most} with resources.cpu {spec.resources.cpu:g}: each trial runs {most} threads on "
                f"the {spec.resources.cpu:g} core(s) Ray counts for it, so trials at once oversubscribe the machine; "
                f"leave train.threads out (a trial then takes its resources.cpu) or raise resources.cpu")  # fmt: skip
    return None


def schedule_note(spec: SweepSpec) -> str | None:
    """A schedule whose ramp is longer than a trial's training (``ramp_steps`` past ``train.steps``): those trials
    never reach c_max (or β), which the frontier would not show."""
    from .space import corner_configs

    base = spec.base_config
    for config in corner_configs(spec, ("objective", "train.steps")):
        short = config.objective.schedule.cut_short(config.objective.beta, config.train.steps)
        if short:
            drawn = config.objective != base.objective or config.train.steps != base.train.steps
            return short + (" — in trials the search space draws so" if drawn else "")
    return None


def check_tracking(uri: str) -> None:
    """The tracking URI must name a store MLflow opens, and an http(s) server must answer (``/health``), before
    anything starts."""
    from .store import TrackingError, check_local_store, check_reachable, check_scheme

    try:
        check_scheme(uri)
        check_local_store(uri)
        check_reachable(uri, timeout=10.0)
    except (TrackingError, ValueError) as exc:
        raise PreflightError(f"tracking.uri: {exc}") from None


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) Ray address must accept a connection; ``auto`` and the embedded
    default are left to Ray."""
    if address is None or address == "auto":
        return
    target = address.removeprefix("ray://").rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(f"ray.address: expected null, auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise PreflightError(f"ray.address: nothing answers at {address} ({exc.strerror or exc}); start the cluster "
                             f"(`ray start --head`, or `ray up ray_cluster.yaml`) or fix the address") from None  # fmt: skip


def local_cpus() -> int:
    """The cores an embedded Ray counts (cgroup limits included, as Ray counts them)."""
    try:
        from ray._private.utils import get_num_cpus

        return int(get_num_cpus())
    except Exception:  # noqa: BLE001 - a Ray upgrade moved it: the cores this process may use
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_local_resources(spec: SweepSpec) -> None:
    """On the embedded Ray (no ``ray.address``), a trial must fit the machine: Tune would wait forever for a trial that
    asks for more cores or GPUs than the machine has. (A cluster may add nodes: left to it.)"""
    if spec.ray.address is not None:
        return
    cpus = spec.ray.num_cpus or local_cpus()
    if spec.resources.cpu > cpus:
        raise PreflightError(f"resources.cpu: each trial asks for {spec.resources.cpu:g} cores, but the local Ray has "
                             f"{cpus}; ask for at most {cpus}, or run on a cluster (ray.address)")  # fmt: skip
    if spec.resources.gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if spec.resources.gpu > gpus:
            raise PreflightError(f"resources.gpu: each trial asks for {spec.resources.gpu:g} GPUs, but this machine has "
                                 f"{gpus}; set resources.gpu: 0 to train on CPUs, or run on a cluster with GPUs "
                                 f"(ray.address)")  # fmt: skip


def check_devices(spec: SweepSpec) -> None:
    """On the embedded Ray, every ``train.device`` a trial can get must be on this machine (``cuda`` without CUDA
    would fail every trial). A cluster's workers may have what the driver's machine lacks: left to them."""
    if spec.ray.address is not None:
        return
    from bvae_core.trainer import resolve_device

    from .space import corner_configs

    for config in corner_configs(spec, ("train.device",)):
        try:
            resolve_device(config.train.device)
        except ValueError as exc:
            raise PreflightError(f"{_where(spec, 'train.device')}{exc}; use auto (CUDA when present) or cpu, or run on "
                                 f"a cluster with GPUs (ray.address)") from None  # fmt: skip


#: URI schemes pyarrow (so Ray Tune's storage) opens, as pyarrow spells them (lower case)
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file", "local", "mock")


def check_storage(path: str) -> None:
    """The storage root must be writable: a local folder is created (that is all a sweep writes before Ray), an
    ``s3://`` prefix gets a probe object written and removed (credentials and endpoint from the standard AWS
    environment variables)."""
    if "://" not in path:
        folder = Path(path)
        existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
            raise PreflightError(f"storage.path: cannot create {folder}: {existing} is not a writable folder")
        return
    scheme = path.split("://", 1)[0]
    if scheme not in STORAGE_SCHEMES:
        raise PreflightError(f"storage.path: unsupported scheme '{scheme}://' in {path}; expected a folder, s3://BUCKET/"
                             f"PREFIX or another file system Ray's storage reads ({', '.join(STORAGE_SCHEMES)})")  # fmt: skip
    if scheme != "s3":
        return  # other filesystems (gs://, …): left to Ray
    import pyarrow.fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(path)
        probe = f"{root.rstrip('/')}/.bvae-write-check-{uuid.uuid4().hex}"
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesystem.delete_file(probe)
    except OSError as exc:  # pyarrow reports S3 errors (denied, bad keys, no bucket, unreachable) as OSError
        raise PreflightError(f"storage.path: cannot write to {path} ({' '.join(str(exc).split())[:300]}); check the "
                             f"bucket and the AWS_* credentials and endpoint") from None  # fmt: skip


def preflight(spec: SweepSpec, tracking_uri: str, resume: bool = False) -> list[str]:
    """All of the above, cheapest first. Returns notes for the sweep's first lines (things worth knowing that do
    not stop it). A ``resume`` skips what concerns how the search was set up (a sweep started by a version that did
    not check it continues with the spec it started with)."""
    check_ray_address(spec.ray.address)
    check_local_resources(spec)
    check_devices(spec)
    check_storage(spec.storage.path)
    check_latent_size(spec)
    if not resume:
        check_searched_fields_used(spec)
    data = check_data(spec)
    check_tracking(tracking_uri)
    file_rows = len(data.factors) if data is not None and data.factors is not None else None
    notes = (factors_note(spec, data), in_sample_note(spec, file_rows), scheduler_note(spec), schedule_note(spec),
             threads_note(spec))  # fmt: skip
    return [note for note in notes if note]
