"""The CPU thread count a run picks when train.threads is null: the free cores, never more than there are."""

import subprocess
import sys
import time

import torch

from bvae_core.run import train
from bvae_core.threads import busy_cores, choose_threads


def test_auto_takes_the_free_cores_and_at_least_one(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(None, cores=2, busy=0.0).threads == 2  # idle: every core
    assert choose_threads(None, cores=2, busy=1.0).threads == 1  # one other busy process on 2 cores: one thread
    assert choose_threads(None, cores=2, busy=6.0).threads == 1
    assert choose_threads(None, cores=8, busy=2.7).threads == 5
    choice = choose_threads(None, cores=2, busy=1.0)
    assert choice.reason == "auto" and choice.describe() == "1 thread (auto: load 1.00 on 2 cores)"


def test_config_then_environment_win_over_auto(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(None, cores=2, busy=0.0).describe() == "3 threads (OMP_NUM_THREADS)"
    assert choose_threads(4, cores=2, busy=0.0).describe() == "4 threads (train.threads)"


def test_a_busy_process_is_seen_at_once():
    """A process started a moment ago counts although the 1-minute load average has not caught up yet."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores() >= 1.0
    finally:
        hog.kill()
        hog.wait()


def test_bvae_train_says_how_many_threads_it_chose(capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        train({"dataset": {"name": "blobs", "resolution": 32, "grid": 8},
               "model": {"arch": "mlp", "latent_dim": 2, "hidden": 16},
               "train": {"steps": 4, "eval_every": 4, "log_every": 2, "batch_size": 8, "device": "cpu"}})  # fmt: skip
        header = capsys.readouterr().err.splitlines()[0]
        chosen = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert f"on cpu with {chosen} thread" in header and "(auto:" in header, header


def test_a_resumed_run_keeps_the_thread_count_it_trained_with(monkeypatch, tmp_path):
    """Auto threads follow the load, and a conv's last digits follow the threads: a checkpoint written with 2 threads
    and resumed on a busier machine (1 thread) gave other numbers than the run uninterrupted."""
    import bvae_core.threads as threads
    from bvae_core import Trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    config = {"seed": 3, "dataset": {"name": "blobs", "resolution": 32, "grid": 8},
              "model": {"arch": "burgess", "latent_dim": 3},
              "train": {"steps": 6, "eval_every": 6, "batch_size": 16, "device": "cpu"}}  # fmt: skip
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)  # idle: 2 threads
        whole = Trainer(config)
        assert whole.threads.threads == 2
        whole.fit(6)
        first = Trainer(config)
        first.fit(3)
        first.save(tmp_path / "ckpt.pt")
        monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)  # busier now: auto would take 1
        resumed = Trainer.load(tmp_path / "ckpt.pt")
        assert resumed.threads.describe() == "2 threads (the checkpoint's)" and torch.get_num_threads() == 2
        resumed.fit(3)
    finally:
        torch.set_num_threads(before)
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
