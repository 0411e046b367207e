"""The S3 store refuses checkpoint uploads for a while (503s from a proxy in front of a real moto S3 server): the
trials retry the upload and the sweep completes; the checkpoints end up in the bucket. Real local Ray, real MLflow
store, the sweep in its own process."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
import pytest
import yaml
from mlflow import MlflowClient

from servers import QUIET_ENV, FlakyProxy, create_bucket, start_moto
from sweeps.store import child_runs, find_parent_run
from test_sweep import GAUSSIAN_BASE

pytestmark = pytest.mark.slow
REFUSED_UPLOADS = 8  # more than the S3 client's own retries of one request


def test_checkpoint_uploads_refused_for_a_while_are_retried_and_the_sweep_completes(tmp_path):
    s3 = start_moto(tmp_path / "moto")
    try:
        create_bucket(s3.url, "sweeps")
        refused = {"n": 0}

        def checkpoint_upload(method: str, path: str) -> bool:
            if method == "PUT" and "checkpoint.pt" in path and refused["n"] < REFUSED_UPLOADS:
                refused["n"] += 1
                return True
            return False

        proxy = FlakyProxy(s3.url, checkpoint_upload, status=503)
        spec = {"name": "s3flaky", "base": GAUSSIAN_BASE,
                "search": {"trials": 2, "concurrency": 1, "sampler": "random", "max_failures": 0,
                           "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}},
                "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": {"path": "s3://sweeps/runs"},
                "ray": {"num_cpus": 2}}  # fmt: skip
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, **QUIET_ENV, "AWS_ENDPOINT_URL": proxy.url, "PYTHONUNBUFFERED": "1"}
        done = subprocess.run([sys.executable, "-m", "sweeps", "sweep", "run", "spec.yaml"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "2/2 trials completed" in done.stdout, done.stdout[-2000:]  # no trial needed a restart (max_failures 0)
        assert refused["n"] == REFUSED_UPLOADS
        client = MlflowClient(spec["tracking"]["uri"])
        parent = find_parent_run(client, "s3flaky", "s3://sweeps/runs/s3flaky")
        assert [r.info.status for r in child_runs(client, parent.info.run_id)] == ["FINISHED", "FINISHED"]
        bucket = boto3.client("s3", endpoint_url=s3.url, region_name=QUIET_ENV["AWS_DEFAULT_REGION"],
                              aws_access_key_id=QUIET_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=QUIET_ENV["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="sweeps", Prefix="runs/s3flaky/").get("Contents", [])]
        assert sum(k.endswith("/checkpoint.pt") for k in keys) >= 2, keys
    finally:
        s3.stop()
