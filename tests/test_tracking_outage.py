"""The tracking server goes away mid-sweep — stopped for ~15 s, or answering 500s — and the sweep neither stops nor
loses a metric: the callback keeps its writes and delivers them when the server answers again. Real moto S3 and a
real MLflow server on 127.0.0.1, a real sweep in its own process (a real local Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sweeps.store import child_runs, find_parent_run

from servers import FlakyProxy, create_bucket, free_port, logs_on_error, start_mlflow, start_moto

pytestmark = pytest.mark.slow

EVALS, TRIALS = 6, 3
BASE = {
    "seed": 0,
    "dataset": {"name": "gaussian", "eigenvalues": [4.0, 2.0, 1.0, 0.5], "n_train": 5000, "n_test": 1000},
    "model": {"arch": "linear", "latent_dim": 4, "likelihood": {"kind": "gaussian", "sigma": 1.0}},
    "train": {"steps": 600 * EVALS, "batch_size": 128, "lr": 3.0e-3, "eval_every": 600, "log_every": 600},
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto"))
    create_bucket(server.url, "artifacts")
    yield server
    server.stop()


def _spec(tmp: Path, uri: str) -> Path:
    data = {"name": "outage", "base": BASE,
            "search": {"trials": TRIALS, "seed": 0, "concurrency": 1, "sampler": "random",
                       "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}},
            "tracking": {"uri": uri}, "storage": {"path": str(tmp / "ray_results")}, "ray": {"num_cpus": 2}}  # fmt: skip
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start_sweep(tmp: Path, spec: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BVAE_TRACKING_DRAIN_S": "180"}
    return subprocess.Popen([sys.executable, "-m", "sweeps", "sweep", "run", str(spec)], cwd=tmp,
                            stdout=open(tmp / "sweep.out", "w"), stderr=open(tmp / "sweep.err", "w"), env=env,
                            start_new_session=True)  # fmt: skip


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the server may be starting
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics_logged(uri: str) -> int:
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`bvae.trial_id` != ''")
    return sum(len(client.get_metric_history(r.info.run_id, "rate")) for r in runs)


def _assert_nothing_lost(tmp: Path, uri: str, driver: subprocess.Popen) -> str:
    assert driver.wait(600) == 0, (tmp / "sweep.err").read_text()[-3000:]
    err = (tmp / "sweep.err").read_text()
    client = MlflowClient(uri)
    parent = find_parent_run(client, "outage", str(tmp / "ray_results" / "outage"))
    runs = child_runs(client, parent.info.run_id)
    assert len(runs) == len({r.data.tags["bvae.trial_id"] for r in runs}) == TRIALS  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs) and client.get_run(parent.info.run_id).info.status == "FINISHED"
    for run in runs:  # every evaluation of every trial arrived (counted)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "rate")]
        assert sorted(steps) == [600 * (i + 1) for i in range(EVALS)], steps
    assert "does not answer" in err and "answers again" in err, err[-3000:]
    return err


def test_a_tracking_server_stopped_for_15_s_mid_sweep_loses_nothing(s3, tmp_path):
    port = free_port()
    db = tmp_path / "mlflow.db"
    tracking = start_mlflow(db, "s3://artifacts/outage", s3.url, port=port)
    uri = tracking.url
    driver = _start_sweep(tmp_path, _spec(tmp_path, uri))
    try:
        with logs_on_error(tracking):
            _wait(lambda: _metrics_logged(uri) >= 2, 300, "the sweep's first metrics")
            tracking.stop()
            time.sleep(15)
            tracking = start_mlflow(db, "s3://artifacts/outage", s3.url, port=port)
            _assert_nothing_lost(tmp_path, uri, driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
        tracking.stop()


def test_a_tracking_server_answering_500s_mid_sweep_loses_nothing(s3, tmp_path):
    tracking = start_mlflow(tmp_path / "mlflow.db", "s3://artifacts/flaky", s3.url)
    failing = threading.Event()
    proxy = FlakyProxy(tracking.url, lambda method, path: failing.is_set())
    uri = proxy.url
    driver = _start_sweep(tmp_path, _spec(tmp_path, uri))
    try:
        with logs_on_error(tracking):
            _wait(lambda: _metrics_logged(tracking.url) >= 2, 300, "the sweep's first metrics")
            failing.set()
            time.sleep(15)
            failing.clear()
            assert proxy.refused > 0  # the sweep did talk to it while it failed
            _assert_nothing_lost(tmp_path, tracking.url, driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
        proxy.shutdown()
        tracking.stop()
