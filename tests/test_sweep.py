"""Sweeps end to end with a real local Ray, real Optuna samplers and a real MLflow store (sqlite), tiny models."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
import yaml
from mlflow import MlflowClient

from bvae_core.data.files import DataFileError
from sweeps.runner import run_sweep
from sweeps.spec import SpecError, parse_spec
from sweeps.tracking import child_runs, find_parent_run

ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN_BASE = {
    "seed": 0,
    "dataset": {"name": "gaussian", "eigenvalues": [4.0, 2.0, 1.0, 0.5], "n_train": 5000, "n_test": 1000},
    "model": {"arch": "linear", "latent_dim": 4, "likelihood": {"kind": "gaussian", "sigma": 1.0}},
    "objective": {"beta": 1.0},
    "train": {"steps": 300, "batch_size": 128, "lr": 3.0e-3, "eval_every": 100, "log_every": 100},
}


def make_spec(tmp_path: Path, name: str, search: dict, base: dict = GAUSSIAN_BASE) -> dict:
    return {
        "name": name,
        "base": base,
        "search": search,
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "storage": {"path": str(tmp_path / "ray_results")},
    }


def runs_of(spec_dict: dict, outcome):
    client = MlflowClient(outcome.tracking_uri)
    parent = find_parent_run(client, spec_dict["name"], outcome.experiment_path)
    return client, parent, child_runs(client, parent.info.run_id)


@pytest.mark.parametrize("cohort", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_capacity_trial_logs_its_multiplier_with_every_evaluation(local_ray, tmp_path, cohort):
    """The contract's training metrics of a controlled-capacity trial reach its run: C(t) and λ (docs/contracts.md)."""
    base = {**GAUSSIAN_BASE, "objective": {"beta": 1.0, "schedule": {"kind": "linear_capacity", "c_max": 3.0,
                                                                      "ramp_steps": 200, "gamma": 50.0}}}  # fmt: skip
    data = make_spec(tmp_path, f"lambda{cohort}", {"trials": 2, "cohort": cohort, "seed": 0, "sampler": "random",
                                                     "space": {"model.latent_dim": {"choice": [2, 4]}}}, base)  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    client, _, children = runs_of(data, outcome)
    assert len(children) == 2
    for run in children:
        for name in ("capacity", "capacity_multiplier", "train/loss"):
            history = client.get_metric_history(run.info.run_id, name)
            assert [m.step for m in history] == [100, 200, 300], name
        assert all(0.0 <= m.value <= 50.0 for m in client.get_metric_history(run.info.run_id, "capacity_multiplier"))


def test_four_trials_give_four_child_runs_and_a_four_trial_study(local_ray, tmp_path):
    data = make_spec(tmp_path, "four", {"trials": 4, "seed": 1, "sampler": "tpe", "concurrency": 2, "space": {
        "objective.beta": {"log_uniform": [0.2, 5.0]}, "model.latent_dim": {"choice": [2, 4]}}})  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    client, parent, children = runs_of(data, outcome)
    assert parent.data.tags["bvae.sweep"] == "four" and parent.info.status == "FINISHED"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert len(children) == 4
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"objective.beta", "model.latent_dim"} <= run.data.params.keys()
        assert {"rate", "distortion", "nelbo", "sse", "active_units", "kl/0"} <= run.data.metrics.keys()
        assert not any(k.startswith(("config", "time", "pid", "done")) for k in run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "rate")
        assert [m.step for m in history] == [100, 200, 300]
    assert outcome.study is not None
    states = [t.state for t in outcome.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 4
    assert all(len(t.values) == 2 for t in outcome.study.trials)
    assert {r.status for r in outcome.rows} == {"COMPLETED"}

    # The same sweep again: refused before anything starts, the finished sweep's runs untouched.
    with pytest.raises(SpecError, match="already exists.*bvae sweep resume"):
        run_sweep(parse_spec(data))
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert len(child_runs(client, parent.info.run_id)) == 4


def test_a_missing_data_file_stops_the_sweep_before_anything_starts(tmp_path):
    base = {**GAUSSIAN_BASE, "dataset": {"name": "file", "path": str(tmp_path / "absent.npz")},
            "model": {"arch": "mlp", "latent_dim": 2}}  # fmt: skip
    data = make_spec(tmp_path, "nodata", {"trials": 2, "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}}, base)
    with pytest.raises(DataFileError, match="no such file: .*absent.npz"):
        run_sweep(parse_spec(data))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_resume_of_a_sweep_that_never_ran_is_refused_before_anything_starts(tmp_path):
    data = make_spec(tmp_path, "never", {"trials": 2, "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}})
    with pytest.raises(SpecError, match="no sweep 'never' to resume"):
        run_sweep(parse_spec(data), resume=True)
    assert not (tmp_path / "mlflow.db").exists()  # no tracking store created


@pytest.mark.slow
def test_diverging_trial_fails_and_the_others_finish(local_ray, tmp_path, capsys):
    # a learning rate of 1e12 throws the weights past float32 in a step or two: a deterministic divergence
    data = make_spec(tmp_path, "diverge", {"trials": 4, "sampler": "grid", "concurrency": 2, "space": {
        "objective.beta": {"choice": [0.5, 2.0]}, "train.lr": {"choice": [1.0e-3, 1.0e12]}}})  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    why = [line for line in capsys.readouterr().err.splitlines() if " failed: " in line]
    assert len(why) == 2 and all("non-finite" in line and "lower train.lr" in line for line in why), why  # the reason
    client, parent, children = runs_of(data, outcome)
    by_lr = {}
    for run in children:
        by_lr.setdefault(float(run.data.params["train.lr"]), []).append(run)
    assert len(by_lr[1e-3]) == 2 and len(by_lr[1e12]) == 2
    assert all(r.info.status == "FINISHED" for r in by_lr[1e-3])
    assert all(r.info.status == "FAILED" and r.data.tags["bvae.status"] == "failed" for r in by_lr[1e12])
    states = sorted(t.state.name for t in outcome.study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert "RUNNING" not in {r.info.status for r in children}


def test_a_top_level_key_such_as_the_seed_can_be_searched(local_ray, tmp_path, capsys):
    """`seed` has no dot: its progress line once raised IndexError at the first report."""
    data = make_spec(tmp_path, "seeds", {"trials": 2, "sampler": "grid", "space": {"seed": {"choice": [0, 1]}}})
    data["base"] = {**GAUSSIAN_BASE, "train": {**GAUSSIAN_BASE["train"], "steps": 100}}
    outcome = run_sweep(parse_spec(data))
    err = capsys.readouterr().err
    assert "seed=0" in err and "seed=1" in err
    client, parent, children = runs_of(data, outcome)
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert {r.info.status for r in children} == {"FINISHED"} and parent.info.status != "RUNNING"
    rates = {r.data.params["seed"]: r.data.metrics["rate"] for r in children}
    assert rates["0"] != rates["1"]  # the seed reached the trainer


def test_the_first_line_says_what_this_machine_runs_at_once(local_ray, tmp_path):
    from sweeps.runner import trials_at_once

    data = make_spec(tmp_path, "wide", {"trials": 8, "concurrency": 8, "space": {"objective.beta": {"uniform": [1, 2]}}})
    assert trials_at_once(parse_spec(data), 8) == 2  # the local Ray's 2 cores, one trial each
    assert trials_at_once(parse_spec({**data, "ray": {"address": "auto"}}), 8) == 8  # a cluster may grow


def test_scheduler_stopped_trial_is_pruned(local_ray, tmp_path, capsys):
    base = {**GAUSSIAN_BASE, "train": {**GAUSSIAN_BASE["train"], "steps": 400}}
    data = make_spec(tmp_path, "asha", {
        "trials": 6, "sampler": "grid", "concurrency": 1,  # the grid holds 4: the first line says so
        "space": {"objective.beta": {"choice": [0.5, 30.0, 0.6, 40.0]}},
        "scheduler": {"kind": "asha", "metric": "nelbo", "mode": "min", "grace_period": 1, "reduction_factor": 2},
    }, base)  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    assert "sweep asha: 4 trials (the grid holds 4; search.trials asked 6), 1 at a time" in capsys.readouterr().err
    client, parent, children = runs_of(data, outcome)
    assert len(outcome.rows) == 4
    pruned = [t for t in outcome.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [t.state for t in outcome.study.trials]
    assert all(t.values is None for t in pruned)  # no partial values told to Optuna
    pruned_runs = [r for r in children if r.data.tags.get("bvae.status") == "pruned"]
    assert len(pruned_runs) == len(pruned) and all(r.info.status == "KILLED" for r in pruned_runs)
    assert {r.status for r in outcome.rows} >= {"PRUNED", "COMPLETED"}


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_driver_then_resume_gives_exactly_one_run_per_trial(tmp_path):
    base = {**GAUSSIAN_BASE, "train": {**GAUSSIAN_BASE["train"], "steps": 3000, "eval_every": 500}}
    data = make_spec(tmp_path, "killed", {"trials": 4, "seed": 0, "concurrency": 1,
                                          "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}}, base)  # fmt: skip
    data["ray"] = {"num_cpus": 2}
    spec_path = tmp_path / "killed.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    uri = data["tracking"]["uri"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "run.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "sweeps", "sweep", "run", str(spec_path)], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    try:
        def finished_children():
            try:
                client = MlflowClient(uri)
                parent = find_parent_run(client, "killed", str(tmp_path / "ray_results" / "killed"))
                return parent and [r for r in child_runs(client, parent.info.run_id) if r.info.status == "FINISHED"]
            except Exception:
                return None

        _wait_for(finished_children, 240, "a finished trial")
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    time.sleep(2)
    client = MlflowClient(uri)
    parent = find_parent_run(client, "killed", str(tmp_path / "ray_results" / "killed"))
    before = child_runs(client, parent.info.run_id)
    assert any(r.info.status == "RUNNING" for r in before) or len(before) < 4  # it really was interrupted

    resumed = subprocess.run([sys.executable, "-m", "sweeps", "sweep", "resume", str(spec_path)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=400, env=env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    children = child_runs(client, parent.info.run_id)
    trial_ids = [r.data.tags["bvae.trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == 4, trial_ids
    assert all(r.info.status == "FINISHED" for r in children), [(r.info.status, r.data.tags) for r in children]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    # the runs of trials that finished before the kill are the same runs, still FINISHED with the same result (a trial
    # whose end Tune had not yet recorded is re-run from its final checkpoint: same, deterministic evaluation)
    for run in before:
        if run.info.status == "FINISHED":
            after = client.get_run(run.info.run_id)
            assert after.info.status == "FINISHED" and after.data.metrics["rate"] == run.data.metrics["rate"]
    assert "4/4 trials completed" in resumed.stdout
