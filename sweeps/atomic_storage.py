"""Tune storage on a local (or mounted) folder whose files are written whole or not at all.

Ray Tune saves a sweep's state (``experiment_state-*.json``, the searcher's state, checkpoints) in a staging folder
and copies it to the storage path in a background thread. On a local folder that copy writes in place, so a driver
killed mid-copy leaves a truncated ``experiment_state-*.json`` — and Tune, unable to read it, logs an error and
*starts the sweep over*. Measured here: one first-report kill in 30 under load left a 4,096-byte state file and a
resume that ran one new trial instead of the three planned. Object stores (S3) publish an object whole, so only
folders need this: :func:`atomic_local_filesystem` is pyarrow's local file system with every file written beside
its destination and renamed over it when complete (``bvae_core.atomic.ReplacingFile``). A copy can also read a
state file that Tune is rewriting in its staging folder: :mod:`sweeps.state_saves` closes that, for every storage.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow
import pyarrow.fs as pafs

from bvae_core.atomic import ReplacingFile

#: Tune's saved experiment state (``TuneController.CKPT_FILE_TMPL``): the newest by name is the one a resume reads.
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's ``LocalFileSystem``, except that an output stream replaces its file only once it is closed whole."""

    def __init__(self) -> None:
        self._local = pafs.LocalFileSystem()

    def __reduce__(self) -> tuple[Any, ...]:  # pickled into Tune's trial actors
        return (AtomicLocalHandler, ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def get_type_name(self) -> str:
        return "bvae-atomic-local"

    def equals(self, other: Any) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of / (bvae-atomic-local)")

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._local.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(16 * 1024 * 1024):
                target.write(chunk)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(ReplacingFile(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return self._local.open_append_stream(path)


def atomic_local_filesystem() -> pafs.FileSystem:
    """A local file system for Tune's ``storage_filesystem``: no reader ever sees a file half-written."""
    return pafs.PyFileSystem(AtomicLocalHandler())


def newest_experiment_state(experiment_dir: str, filesystem: pafs.FileSystem | None = None
                            ) -> tuple[str, bytes] | None:  # fmt: skip
    """The path and bytes of the experiment state a resume restores from — Tune's choice, the greatest name — in
    ``experiment_dir`` (a folder or URI), or None if there is none. ``OSError`` if it cannot be read."""
    if filesystem is None:
        filesystem, experiment_dir = pafs.FileSystem.from_uri(experiment_dir)
    import fnmatch

    infos = filesystem.get_file_info(pafs.FileSelector(experiment_dir, allow_not_found=True))
    names = sorted(fnmatch.filter([info.base_name for info in infos if info.is_file], EXPERIMENT_STATE_GLOB))
    if not names:
        return None
    newest = f"{experiment_dir.rstrip('/')}/{names[-1]}"
    with filesystem.open_input_stream(newest) as stream:
        return newest, stream.readall()


def unreadable_experiment_state(experiment_dir: str, filesystem: pafs.FileSystem | None = None) -> str | None:
    """Why the state a resume would read from ``experiment_dir`` (a folder or URI) is unusable, or None if it reads.

    Tune itself does not stop on an unreadable state: it starts the sweep over, which would run the planned trials
    again beside the ones already tracked."""
    newest = None
    try:
        found = newest_experiment_state(experiment_dir, filesystem)
        if found is None:
            return None  # nothing to resume: the caller says so in its own words
        newest, data = found
        json.loads(data)
    except (OSError, ValueError) as exc:
        return f"{newest or experiment_dir} is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    return None
