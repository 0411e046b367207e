"""Tune's saved sweep state, never copied to storage while it is being rewritten.

Ray Tune (2.60) rewrites ``experiment_state-*.json`` in its driver's staging folder *in place* (``open(…, "w")``)
every time it saves, and copies that folder to the storage path in a background thread — without waiting for the
previous copy to end. A save that lands during a copy truncates the file under the copier, which then publishes an
empty or cut-off state (whole, on S3 or through :mod:`sweeps.atomic_storage`: the damage is done at the source). A
driver that dies before the next copy leaves that state behind; Tune, unable to read it, would start the sweep over,
and ``bvae sweep resume`` refuses it. Seen in this project's CI: a driver SIGKILLed after its first finished trial
left an empty state file.

:func:`serialize_state_saves` makes each save wait for the copy in flight, as Ray's own next copy already does.
Ray has no public hook for it: this wraps ``TuneController.save_to_dir`` and says so when a Ray upgrade moves it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "_bvae_waits_for_sync"


def finish_copy_in_flight(syncer: Any) -> None:
    """Wait for ``syncer``'s background copy, if one is running; a copy that failed is logged (Ray retries it with
    the next save), never raised here."""
    process = getattr(syncer, "_sync_process", None)
    if process is None or not getattr(process, "is_running", False):
        return
    try:
        syncer.wait()
    except Exception as exc:  # Ray's own next sync logs the same and goes on
        logger.warning("the last copy of the sweep state to storage failed: %s", exc)


def serialize_state_saves() -> None:
    """Make Tune's state saves wait for the copy in flight (idempotent; the driver calls it before ``fit``)."""
    try:
        from ray.tune.execution.tune_controller import TuneController

        original = TuneController.save_to_dir
    except (ImportError, AttributeError) as exc:  # pragma: no cover - a Ray upgrade moved it
        raise RuntimeError(f"this Ray version has no TuneController.save_to_dir to guard ({exc}); pin ray as in "
                           f"requirements.txt") from exc  # fmt: skip
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def save_to_dir(self: Any, *args: Any, **kwargs: Any) -> Any:
        storage = getattr(self, "_storage", None)
        if storage is not None:
            finish_copy_in_flight(getattr(storage, "syncer", None))
        return original(self, *args, **kwargs)

    setattr(save_to_dir, _MARK, True)
    TuneController.save_to_dir = save_to_dir
