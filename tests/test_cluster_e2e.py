"""A sweep submitted to a real multi-node Ray cluster, for real, all on 127.0.0.1: the dev stack of ``infra/``
(moto's S3-compatible server, an MLflow tracking server whose artifacts live in that S3, a Ray head with
``--num-cpus=0``), plus a worker node started with ``ray start --address``. Every process started here is stopped
by its own pid when the module ends.

- A sweep submitted with ``bvae sweep submit``: submitting it again while it runs does not start it twice; ``bvae
  sweep stop`` ends it cleanly (the runs KILLED, nothing lost); submitting it again resumes it from S3 to the end;
  its checkpoints are in the bucket, its artifacts behind the tracking server, and ``bvae frontier`` / ``bvae pick``
  work against the server from a fresh process in a fresh folder with no S3 credentials.
- The worker node dies mid-sweep (its raylet killed by pid); a new one joins; every trial completes from its last
  checkpoint, with exactly one MLflow run per trial.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from servers import RayNode, alive_nodes, start_ray_worker

pytestmark = pytest.mark.slow  # 2 shared cores: stack + worker 0.5–1 min, the first test 2.5–5 min, the second 1.5–2.5

ROOT = Path(__file__).resolve().parents[1]
BVAE = [sys.executable, "-m", "sweeps"]
BUCKET = "bvae"


def _run(argv: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(argv[2:] if argv[:2] == BVAE[:2] else argv)}  (exit {proc.returncode})\n{proc.stdout[-3000:]}"
          f"\n{proc.stderr[-3000:]}")  # fmt: skip
    return proc


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """The dev stack (``python -m infra.devstack up --ray --ray-cpus 0``) and one worker node with 2 CPUs."""
    tmp = tmp_path_factory.mktemp("cluster_e2e")
    stack_dir = tmp / "stack"
    base_env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "infra.devstack", "up", "--ray", "--ray-cpus", "0", "--dir",
                         str(stack_dir)], cwd=ROOT, env=base_env, capture_output=True, text=True, timeout=300)  # fmt: skip
    request.addfinalizer(lambda: subprocess.run([sys.executable, "-m", "infra.devstack", "down", "--dir",
                                                 str(stack_dir)], cwd=ROOT, env=base_env, timeout=120))  # fmt: skip
    assert up.returncode == 0, up.stderr
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", up.stdout, flags=re.M))
    state = json.loads((stack_dir / "state.json").read_text())
    head = RayNode(server=None, gcs_address=state["ray"]["gcs_address"], dashboard_url=state["ray"]["dashboard"])
    env = {**base_env, **exports}
    worker = start_ray_worker(tmp, head, num_cpus=2, env=exports)
    holder = {"worker": worker}
    request.addfinalizer(lambda: holder["worker"].stop())
    nodes = alive_nodes(head.dashboard_url)
    assert len(nodes) == 2 and {n["node_ip"] for n in nodes} == {"127.0.0.1"}, nodes  # loopback only
    assert {n["is_head_node"]: n["resources_total"].get("CPU", 0) for n in nodes} == {True: 0, False: 2}
    print(f"dev stack + worker up in {time.monotonic() - start:.0f} s: {exports}")
    return {"tmp": tmp, "env": env, "exports": exports, "head": head, "holder": holder, "state": state}


def write_spec(folder: Path, name: str, steps: int, trials: int) -> Path:
    spec = {
        "name": name,
        "base": {
            "seed": 0,
            "dataset": {"name": "gaussian", "eigenvalues": [4.0, 2.0, 1.0, 0.5], "n_train": 2000, "n_test": 500},
            "model": {"arch": "linear", "latent_dim": 4, "likelihood": {"kind": "gaussian", "sigma": 1.0}},
            "objective": {"beta": 1.0},
            "train": {"steps": steps, "batch_size": 128, "lr": 3.0e-3, "eval_every": 100, "log_every": 100},
        },
        "search": {"trials": trials, "concurrency": 2, "seed": 0, "max_failures": 2,
                   "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}},  # fmt: skip
        "storage": {"path": f"s3://{BUCKET}/sweeps"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def s3_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")  # fmt: skip
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]  # fmt: skip


def wait_for(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_status(cluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster["head"].dashboard_url).get_job_status(job_id).value


def sweep_runs(tracking_uri: str, name: str):
    from mlflow import MlflowClient

    from sweeps.tracking import child_runs, find_parent_run

    client = MlflowClient(tracking_uri)
    parent = find_parent_run(client, name, f"s3://{BUCKET}/sweeps/{name}")
    return client, parent, (child_runs(client, parent.info.run_id) if parent else [])


def checkpoints_in_s3(cluster, name: str) -> list[str]:
    return [k for k in s3_keys(cluster["exports"]["AWS_ENDPOINT_URL"], f"sweeps/{name}/")
            if k.endswith("/checkpoint.pt")]  # fmt: skip


def test_submit_stop_resubmit_and_browse_from_anywhere(cluster, tmp_path):
    name, env, uri = "e2e-submit", cluster["env"], cluster["exports"]["MLFLOW_TRACKING_URI"]
    spec = write_spec(tmp_path, name, steps=1000, trials=2)  # long enough to be stopped halfway
    start = time.monotonic()
    first = _run([*BVAE, "sweep", "submit", str(spec)], env, 120)
    assert first.returncode == 0, first.stderr
    assert "Uploading package" not in first.stderr and "INFO" not in first.stderr, first.stderr  # our own lines only
    job_id = first.stdout.strip().splitlines()[-1]
    again = _run([*BVAE, "sweep", "submit", str(spec)], env, 60)  # the same sweep while it runs: not doubled
    assert again.returncode == 0 and "already" in again.stderr and job_id in again.stderr, again.stderr
    status = _run([*BVAE, "sweep", "status", name], env, 60)
    assert status.returncode == 0 and job_id in status.stdout

    wait_for(lambda: checkpoints_in_s3(cluster, name), 150, "a first checkpoint in S3")
    stop = _run([*BVAE, "sweep", "stop", name], env, 200)
    assert stop.returncode == 0 and "STOPPED" in stop.stderr, stop.stderr
    logs = _run([*BVAE, "sweep", "logs", name], env, 60).stdout  # a job has no terminal: no "Press CTRL+C to skip"
    assert "bvae job driver: stop asked (bvae sweep stop)" in logs and "Stop signal received" not in logs, logs[-2000:]
    client, parent, children = sweep_runs(uri, name)
    assert parent.info.status == "KILLED"  # interrupted, resumable
    assert children and all(r.info.status != "RUNNING" for r in children), [r.info.status for r in children]
    assert any(r.info.status == "KILLED" for r in children), [r.info.status for r in children]
    print(f"stopped after {time.monotonic() - start:.0f} s with {len(children)} runs")

    # another spec is refused here, from the spec kept in S3: no attempt spent on a driver that would refuse it
    changed = _run([*BVAE, "sweep", "submit", str(spec), "--set", "search.trials=3"], env, 60)
    assert changed.returncode == 2 and "search.trials: this spec is not the one sweep 'e2e-submit' was started " \
                                      "with" in changed.stderr, changed.stderr  # fmt: skip
    resumed = _run([*BVAE, "sweep", "submit", str(spec), "--wait"], env, 300)
    assert resumed.returncode == 0, resumed.stderr
    assert "attempt 2" in resumed.stderr and "bvae job driver: sweep resume" in resumed.stdout
    assert "browse it: " in resumed.stderr and "workflowType=machine_learning" in resumed.stderr
    done = _run([*BVAE, "sweep", "submit", str(spec)], env, 60)  # a finished sweep is left alone
    assert done.returncode == 0 and "already finished" in done.stderr
    print(f"sweep done after {time.monotonic() - start:.0f} s")

    client, parent, children = sweep_runs(uri, name)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["bvae.trial_id"] for r in children}) == 2  # one run per trial, also across the resume
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    # Tune's state and checkpoints in the bucket; the runs' artifacts behind the server, stored in the same bucket
    checkpoints = checkpoints_in_s3(cluster, name)
    assert {k.split("/")[2] for k in checkpoints} >= {r.data.tags["bvae.trial_id"] for r in children}, checkpoints
    assert any("experiment_state" in k for k in s3_keys(cluster["exports"]["AWS_ENDPOINT_URL"], f"sweeps/{name}/"))
    for run in children:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert any(k.endswith(f"{run.info.run_id}/artifacts/checkpoint/checkpoint.pt")
                   for k in s3_keys(cluster["exports"]["AWS_ENDPOINT_URL"], "mlflow/"))  # fmt: skip

    # frontier and pick from a fresh process, in a fresh folder, knowing only the server (no S3 credentials)
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    frontier = _run([*BVAE, "frontier", name, "--tracking-uri", uri, "--json"], bare, 120, cwd=fresh)
    assert frontier.returncode == 0, frontier.stderr
    rows = json.loads(frontier.stdout)
    assert len(rows) == 2 and any(r["on_frontier"] for r in rows)
    pick = _run([*BVAE, "pick", name, "--rule", "knee", "--tracking-uri", uri, "--json"], bare, 120, cwd=fresh)
    assert pick.returncode == 0, pick.stderr
    assert json.loads(pick.stdout)["run_id"] in {r.info.run_id for r in children}
    assert not any(fresh.iterdir())  # nothing written locally (no sqlite store made by mistake)


def test_a_worker_node_dies_mid_sweep_and_every_trial_completes(cluster, tmp_path):
    name, env, uri = "e2e-node-loss", cluster["env"], cluster["exports"]["MLFLOW_TRACKING_URI"]
    spec = write_spec(tmp_path, name, steps=600, trials=2)
    start = time.monotonic()
    first = _run([*BVAE, "sweep", "submit", str(spec)], env, 120)
    assert first.returncode == 0, first.stderr
    assert "Uploading package" not in first.stderr and "INFO" not in first.stderr, first.stderr  # our own lines only
    job_id = first.stdout.strip().splitlines()[-1]

    def newest_checkpoints() -> dict[str, int]:
        """trial -> index of its newest checkpoint in S3 (one per evaluation: 0 … 5)."""
        last: dict[str, int] = {}
        for key in checkpoints_in_s3(cluster, name):
            trial, index = key.split("/")[2], int(re.search(r"checkpoint_(\d+)", key).group(1))
            last[trial] = max(index, last.get(trial, -1))
        return last

    # Killed once each trial has its second checkpoint: a trial killed right after its very first report may start
    # over from step 0 (a Tune restore race the sweep tolerates but this test would misread as lost progress).
    last = wait_for(lambda: len(c := newest_checkpoints()) == 2 and min(c.values()) >= 1 and c, 200,
                    "a second checkpoint of each trial in S3", every=0.5)  # fmt: skip
    unfinished = {trial for trial, index in last.items() if index < 5}
    assert unfinished, f"both trials finished before the node could be killed: {last}"
    old = cluster["holder"]["worker"]
    raylet = old.raylet_pid()
    os.kill(raylet, signal.SIGKILL)  # the node dies: its raylet first, then `ray start --block` ends the rest
    print(f"killed raylet {raylet} of the worker node after {time.monotonic() - start:.0f} s")
    old.stop()
    cluster["holder"]["worker"] = start_ray_worker(tmp_path, cluster["head"], num_cpus=2, name="ray-worker-2",
                                                   env=cluster["exports"])  # fmt: skip

    status = wait_for(lambda: (s := job_status(cluster, job_id)) not in ("PENDING", "RUNNING") and s, 300,
                      f"job {job_id} to end", every=2)  # fmt: skip
    logs = _run([*BVAE, "sweep", "logs", name], env, 60).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    print(f"sweep done after {time.monotonic() - start:.0f} s")
    client, parent, children = sweep_runs(uri, name)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and len({r.data.tags["bvae.trial_id"] for r in children}) == 2  # exactly one run each
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["bvae.status"] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "rate")]
        # a restarted trial continued from its checkpoint, not from step 0: every evaluation logged, and at most the
        # one evaluation reported while the node died (its checkpoint not yet the trial's) trained and logged again
        assert sorted(set(steps)) == list(range(100, 601, 100)), steps
        assert len(steps) - len(set(steps)) <= 1, steps
    for trial_id in unfinished:  # each unfinished trial lost its actor with the node and was started again
        assert logs.count(f"trial {trial_id} started") >= 2, f"trial {trial_id} was not restarted"


def test_a_dataset_file_is_read_from_s3(tmp_path, monkeypatch):
    """``base.dataset.path: s3://…``: the trials read the user's file through pyarrow's S3 file system, with the
    endpoint and credentials from the standard AWS variables (here a moto server on 127.0.0.1)."""
    import io

    import boto3
    import numpy as np

    from bvae_core.data import make_dataset
    from servers import QUIET_ENV, create_bucket, start_moto

    s3 = start_moto(tmp_path)
    try:
        for key, value in {**QUIET_ENV, "AWS_ENDPOINT_URL": s3.url}.items():
            monkeypatch.setenv(key, value)
        create_bucket(s3.url, "bvae-data")
        images = (np.random.default_rng(0).random((40, 8, 8)) > 0.5).astype(np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, images=images)
        boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1").put_object(
            Bucket="bvae-data", Key="sets/tiny.npz", Body=buffer.getvalue())  # fmt: skip
        dataset = make_dataset("file", "cpu", path="s3://bvae-data/sets/tiny.npz", test_fraction=0.25)
        assert dataset.n_test == 10 and dataset.example_shape == (1, 8, 8)  # every example, split
    finally:
        s3.stop()
