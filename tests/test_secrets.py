"""No credential reaches a param, tag, metric, artifact, log line or the Tune storage: secrets planted in the
environment of a real sweep (its own process, a real local Ray, a real MLflow store) are searched for everywhere
the sweep writes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_planted_secrets_appear_nowhere_the_sweep_writes(tmp_path):
    secrets = {name: f"planted-{name.lower()}-{uuid.uuid4().hex}" for name in
               ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")}  # fmt: skip
    spec = {
        "name": "secrets",
        "base": {"seed": 0, "dataset": {"name": "gaussian", "eigenvalues": [2.0, 1.0], "n_train": 2000, "n_test": 500},
                 "model": {"arch": "linear", "latent_dim": 2, "likelihood": {"kind": "gaussian"}},
                 "train": {"steps": 200, "batch_size": 64, "eval_every": 100}},
        "search": {"trials": 2, "concurrency": 2, "space": {"objective.beta": {"log_uniform": [0.5, 2.0]}}},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "storage": {"path": str(tmp_path / "ray_results")},
        "ray": {"num_cpus": 2},
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, **secrets, "AWS_ACCESS_KEY_ID": "planted-key-id"}
    done = subprocess.run([sys.executable, "-m", "sweeps", "sweep", "run", "spec.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2/2 trials completed" in done.stdout

    places: dict[str, str] = {"stdout": done.stdout, "stderr": done.stderr}
    client = MlflowClient(spec["tracking"]["uri"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) == 3  # the parent and two trials
    for run in runs:
        places[f"run {run.info.run_id}"] = repr((run.data.params, run.data.tags, run.data.metrics, run.info))
        folder = tmp_path / "artifacts" / run.info.run_id
        client.download_artifacts(run.info.run_id, "", str(folder.mkdir(parents=True) or folder))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]  # Tune storage, artifacts, the store itself
    assert any("ray_results" in str(p) for p in written) and any("checkpoint" in p.name for p in written)
    leaks = [f"{name} in {place}" for name, value in secrets.items() for place, text in places.items() if value in text]
    for path in written:
        data = path.read_bytes()
        leaks += [f"{name} in {path.relative_to(tmp_path)}" for name, value in secrets.items() if value.encode() in data]
    assert not leaks, leaks
