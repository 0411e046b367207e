"""The spec a sweep was started with, kept beside its Tune experiment, so that ``bvae sweep resume`` continues that
sweep and not another one.

A resume rebuilds the trials' training from the spec it is given. A spec that differs from the first run's in what
is trained or searched (``base``, ``search``, ``frontier``, ``eval``, the experiment) would train the remaining
trials differently from the finished ones and mix both in one frontier — or, for ``search.trials``, show progress
against a count the restored searcher does not follow. Such a resume stops before anything starts, naming each
difference and the ``--set`` that gives the started value back. Where and how the sweep runs may change: resources,
the tracking URI, the storage, the Ray address, ``search.max_failures`` and ``search.cohort`` (a resumed searcher
keeps its cohorts).
"""

from __future__ import annotations

import json
import logging
import shlex
from typing import Any

import pyarrow.fs as pafs
import yaml

from bvae_core.config import flatten_dotted

from .spec import SpecError, SweepSpec, absolute_data_paths

logger = logging.getLogger(__name__)

STARTED_SPEC_FILE = "bvae_spec.yaml"
#: dotted prefixes that may differ between the run and a resume of one sweep
MAY_CHANGE = ("resources", "tracking.uri", "storage", "ray", "search.max_failures", "search.cohort")


def _file(experiment_dir: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is None:
        filesystem, experiment_dir = pafs.FileSystem.from_uri(experiment_dir)
    return filesystem, f"{experiment_dir.rstrip('/')}/{STARTED_SPEC_FILE}"


def save_started_spec(spec: SweepSpec, experiment_dir: str, filesystem: pafs.FileSystem | None = None,
                      tracking_uri: str | None = None) -> None:  # fmt: skip
    """Keep ``spec.raw`` in the sweep's experiment folder (a folder or URI) before its first trial, with
    ``tracking_uri``, the store it tracks in, as its ``tracking.uri``. A storage that refuses it is logged, not
    raised: the sweep runs, and a resume goes unchecked."""
    raw = spec.raw if tracking_uri is None else {**spec.raw, "tracking": {**spec.raw.get("tracking", {}),
                                                                         "uri": tracking_uri}}  # fmt: skip
    try:
        filesystem, path = _file(experiment_dir, filesystem)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(yaml.safe_dump(raw, sort_keys=False).encode())
    except OSError as exc:
        logger.warning("could not keep the sweep's spec in %s (%s); a resume will not be checked against it",
                       experiment_dir, exc)  # fmt: skip


def load_started_spec(experiment_dir: str, filesystem: pafs.FileSystem | None = None) -> dict[str, Any] | None:
    """The spec the sweep was started with, or None where none was kept (a sweep started by an older version)."""
    filesystem, path = _file(experiment_dir, filesystem)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        loaded = yaml.safe_load(stream.readall())
    return loaded if isinstance(loaded, dict) else None


def spec_differences(started: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, started value, given value)`` for each value that differs and may not (:data:`MAY_CHANGE`);
    a key one side lacks has the value None there."""
    a, b = flatten_dotted(started), flatten_dotted(given)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(k == p or k.startswith(p + ".") for p in MAY_CHANGE)]  # fmt: skip


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _another_store(before: str, now: str) -> bool:
    """Whether ``now`` names another tracking store than ``before``, the one kept when the sweep started (a URI
    kept as written — relative — by an older version is not compared: it named the store of the directory it ran in)."""
    from .store import resolve_tracking_uri

    try:
        if resolve_tracking_uri(before) != before:
            return False
    except ValueError:
        return False
    same = lambda uri: uri.rstrip("/").lower()  # noqa: E731 - a trailing slash, the case of a scheme or host
    return same(before) != same(now)


def _restoring_set(started: dict[str, Any], key: str) -> str:
    """The ``--set`` that gives ``key`` its started value back: a search-space entry whole (its distribution is one
    value on the command line), anything else as the leaf."""
    space = (started.get("search") or {}).get("space") or {}
    for path in sorted(space, key=len, reverse=True):
        if key == f"search.space.{path}" or key.startswith(f"search.space.{path}."):
            flow = yaml.safe_dump(space[path], default_flow_style=True, width=10**6, sort_keys=False).strip()
            return f"--set {shlex.quote(f'search.space.{path}={flow}')}"
    value = flatten_dotted(started).get(key)
    return f"--set {shlex.quote(f'{key}={_shown(value)}')}"


def check_resume_spec(spec: SweepSpec, experiment_dir: str, filesystem: pafs.FileSystem | None = None,
                      tracking_uri: str | None = None) -> list[str]:  # fmt: skip
    """Raise ``SpecError`` when ``spec`` would resume the sweep in ``experiment_dir`` as another sweep; return notes
    on the values that may change but that a resume does not follow (``search.cohort``), and on a resume that
    tracks in another store than the sweep started in (``tracking_uri``: the one it tracks in now)."""
    try:
        started = load_started_spec(experiment_dir, filesystem)
    except (OSError, yaml.YAMLError):
        return []  # unreadable: the resume goes on as before this file existed
    if started is None:
        return []
    started = absolute_data_paths(started)  # kept by a version that left the space's data paths relative
    differences = spec_differences(started, spec.raw)
    if not differences:
        notes = []
        cohorts = [flatten_dotted(d).get("search.cohort", "auto") for d in (started, spec.raw)]
        if cohorts[1] != "auto" and cohorts[0] != cohorts[1]:  # (auto: kept as what it chose when the sweep started)
            notes.append(f"search.cohort: a resumed search keeps the cohorts it started with ({_shown(cohorts[0])}); "
                         f"{_shown(cohorts[1])} applies to a new sweep")  # fmt: skip
        before = (started.get("tracking") or {}).get("uri")
        if tracking_uri and before and _another_store(before, tracking_uri):
            notes.append(f"tracking.uri: the sweep started in {before}; the trials that ended before this resume stay "
                         f"there, and only what it trains now is tracked in {tracking_uri}")  # fmt: skip
        return notes
    shown = "; ".join(f"{k}: started with {_shown(s)}, given {_shown(g)}" for k, s, g in differences[:4])
    more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
    sets = " ".join(dict.fromkeys(_restoring_set(started, k) for k, s, _ in differences[:4] if s is not None))
    hint = f", e.g. {sets}" if sets else ""
    raise SpecError(f"{differences[0][0]}: this spec is not the one sweep {spec.name!r} was started with ({shown}{more}); "
                    f"resume it with the spec and --set values it was started with{hint}")  # fmt: skip
