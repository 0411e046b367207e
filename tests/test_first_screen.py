"""The first screen a user sees: the project's own lines first, and none of the third-party notices that do not
concern them (Ray's token-authentication notice, MLflow's table creation, pickle and version-label warnings,
progress bars) — a real sweep and a real `bvae pick --register`, each in its own process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow

NOISE = ("Token authentication is enabled", "Creating initial MLflow database tables", "Updating database tables",
         "Pickle or CloudPickle", "does not match installed PyTorch version", "View run", "Downloading artifacts",
         "Uploading artifacts", "it/s]", "contains a local version label",
         "has to be passed to the sampler directly")  # fmt: skip


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=400)  # fmt: skip


def test_a_sweep_and_a_registered_pick_print_only_what_concerns_the_user(tmp_path):
    spec = {
        "name": "screen",
        "base": {"seed": 0, "dataset": {"name": "gaussian", "eigenvalues": [2.0, 1.0], "n_train": 2000, "n_test": 500},
                 "model": {"arch": "linear", "latent_dim": 2, "likelihood": {"kind": "gaussian"}},
                 "train": {"steps": 200, "batch_size": 64, "eval_every": 100}},
        "search": {"trials": 2, "concurrency": 2, "sampler": "grid", "seed": 7, "space": {
            "objective.beta": {"choice": [1.5]},
            "objective.schedule": {"choice": [{"kind": "constant"}, {"kind": "linear_capacity", "c_max": 2.0}]}}},
        "ray": {"num_cpus": 2},
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    sweep = _run(tmp_path, "sweep", "run", "spec.yaml")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    first = sweep.stderr.lstrip().splitlines()[0]
    assert first.startswith("sweep screen: 2 trials"), sweep.stderr[:2000]  # the project's own line comes first
    pick = _run(tmp_path, "pick", "screen", "--rule", "knee", "--register", "screen-model")
    assert pick.returncode == 0, pick.stderr[-3000:]
    for name, text in (("sweep", sweep.stdout + sweep.stderr), ("pick --register", pick.stdout + pick.stderr)):
        noisy = [line for line in text.splitlines() if any(n in line for n in NOISE)]
        assert not noisy, f"{name} printed: {noisy[:5]}"
    # a capacity trial shows no β it does not use (progress lines and summary table)
    capacity_lines = [line for line in sweep.stderr.splitlines() if "schedule=linear_capacity" in line]
    assert capacity_lines and all("beta=" not in line for line in capacity_lines)
    assert "registered: models:/screen-model@picked" in pick.stdout
