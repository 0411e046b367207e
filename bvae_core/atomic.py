"""Files written whole or not at all: a checkpoint or a table is written beside its destination and renamed over it,
so a full disk, a kill or a crash mid-write leaves the previous file as it was and no partial file behind."""

from __future__ import annotations

import os
import io
from pathlib import Path
from typing import Any


def write_atomically(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, and rename it over ``path``. On failure
    the temporary file is removed and an ``OSError`` names ``path`` (e.g. "No space left on device"); ``path``
    itself is untouched. The content is serialised in memory first (see :func:`torch_bytes`), so that a failed
    write is an ``OSError`` from the file system, not a library's own error about a broken stream."""
    path = Path(path)
    try:
        with ReplacingFile(path) as handle:
            handle.write(data)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot write {path}: {reason}; the previous file, if any, is intact") from None
    return path


def torch_bytes(obj: Any) -> memoryview:
    """``torch.save(obj)`` as bytes in memory."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


class ReplacingFile(io.FileIO):
    """A binary file opened for writing that replaces ``path`` only when it is closed whole: the bytes go to a hidden
    temporary file beside it, flushed to disk and renamed over ``path`` on :meth:`close`. A process killed while
    writing leaves ``path`` as it was (and at most the hidden temporary file); a write that raised leaves it as it
    was too, the temporary file removed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.target = Path(path)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.target.with_name(f".{self.target.name}.{os.getpid()}.{id(self):x}.tmp")
        self._failed = False
        super().__init__(self._tmp, "wb")

    def write(self, data: Any) -> int:  # type: ignore[override]
        """Write all of ``data`` (a raw file may take part of it per call: on a nearly full disk, say)."""
        view = memoryview(data).cast("B")
        try:
            done = 0
            while done < len(view):
                done += super().write(view[done:])
            return done
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        if self.closed:
            return
        try:
            try:
                if not self._failed:
                    self.flush()
                    os.fsync(self.fileno())
            finally:
                super().close()
            if not self._failed:
                self._tmp.replace(self.target)
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._failed:
                self._tmp.unlink(missing_ok=True)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:  # the writer raised: keep the previous file
            self._failed = True
        self.close()
