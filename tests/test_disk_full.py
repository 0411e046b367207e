"""A full disk while a checkpoint or the frontier table is written: a clear error naming the file, the earlier file
intact, no partial file left. The disk is a real 2 MB tmpfs, filled up (root only; skipped elsewhere)."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from bvae_core import Trainer
from sweeps.frontier import read_parquet, write_parquet


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    """Fill the disk to the last byte."""
    with open(disk / f"filler-{uuid.uuid4().hex}", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def _trainer() -> Trainer:
    return Trainer({"dataset": {"name": "blobs", "resolution": 32}, "model": {"arch": "mlp", "latent_dim": 4, "hidden": 64},
                    "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "threads": 1}})  # fmt: skip


def test_a_checkpoint_on_a_full_disk_fails_clearly_and_keeps_the_previous_one(small_disk):
    trainer = _trainer()
    path = small_disk / "checkpoint.pt"
    trainer.fit(5)
    trainer.save(path)
    _fill(small_disk)
    trainer.fit(5)
    with pytest.raises(OSError, match=r"cannot write .*checkpoint\.pt: No space left on device; the previous file"):
        trainer.save(path)
    assert Trainer.load(path).step == 5  # the earlier checkpoint, whole
    assert sorted(p.name for p in small_disk.iterdir() if not p.name.startswith("filler")) == ["checkpoint.pt"]


def test_the_frontier_table_on_a_full_disk_fails_clearly_and_keeps_the_previous_one(small_disk):
    rows = [{"sweep": "s", "trial_id": f"t{i}", "run_id": f"r{i}", "rate": float(i), "distortion": 10.0 - i,
             "on_frontier": True, "pareto_rank": 0, "status": "completed"} for i in range(3)]  # fmt: skip
    path = write_parquet(rows, small_disk / "frontier.parquet")
    _fill(small_disk)
    more = rows + [{**rows[0], "trial_id": f"x{i}", "sweep": "x" * 2000} for i in range(200)]
    with pytest.raises(OSError, match=r"cannot write .*frontier\.parquet: No space left on device"):
        write_parquet(more, path)
    assert [r["trial_id"] for r in read_parquet(path)] == ["t0", "t1", "t2"]
    assert sorted(p.name for p in small_disk.iterdir() if not p.name.startswith("filler")) == ["frontier.parquet"]
