"""sweeps.tracking: parent/child MLflow runs, exactly once, with a real local Ray and a real sqlite MLflow store."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray.cloudpickle
from mlflow import MlflowClient
from ray import tune

from sweeps.tracking import (
    CONTRACT_METRICS,
    MLflowTracking,
    TrackingError,
    child_runs,
    contract_metrics,
    find_parent_run,
    resolve_tracking_uri,
)

# Ray workers import a function trainable by reference, and they cannot import this pytest-loaded module:
# ship it by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEPS = 3  # reports per trial: steps 10, 20, 30
CONTRACT = {"rate", "distortion", "nelbo", "kl/0", "kl/1", "train/loss"}


def rd_trainable(config):
    """A stand-in for the real trainable: reports contract metrics + junk, checkpoints every report."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "state.json").read_text())["i"] + 1
    beta = config["objective.beta"]
    case = config.get("case", "ok")
    for i in range(start, STEPS):
        marker = config.get("fail_unless")
        if marker and i == 1 and not os.path.exists(marker):
            raise RuntimeError("simulated crash")
        rate = 4.0 / (beta * (i + 1))
        distortion = float("nan") if case == "nan" and i == STEPS - 1 else 10.0 / (i + 1)
        metrics = {
            "step": (i + 1) * 10,
            "rate": rate,
            "distortion": distortion,
            "nelbo": rate + distortion,
            "kl/0": 0.6 * rate,
            "kl/1": 0.4 * rate,
            "train/loss": distortion + beta * rate,
            "beta": float("inf"),  # non-finite: never logged
            "junk_metric": 1.0,
            "done_training": i == STEPS - 1,
        }
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"i": i}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _stop_prune_case(trial_id, result):
    return result.get("config", {}).get("case") == "prune" and result["training_iteration"] >= 2


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds); tests use their own experiments."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    client.search_experiments()  # creates the tables
    return SimpleNamespace(uri=uri, client=client, dir=db.parent)


def _callback(store, name, key=None, **kw):
    return MLflowTracking(
        tracking_uri=store.uri,
        experiment=f"exp-{name}",
        sweep_name=name,
        sweep_key=key or f"/abs/storage/{name}",
        spec={"name": name, "search": {"trials": 4}},
        **kw,
    )


def _all_runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _children_by_trial(client, parent_id):
    runs = child_runs(client, parent_id)
    by_trial = {r.data.tags["bvae.trial_id"]: r for r in runs}
    assert len(by_trial) == len(runs), "more than one run for a trial"
    return by_trial


def _fake_trial(trial_id, config=None, status="RUNNING"):
    return SimpleNamespace(trial_id=trial_id, config=config or {}, last_result={}, status=status)


def _report(i, rate=1.0, distortion=2.0, done=False):
    return {
        "step": i,
        "training_iteration": i,
        "rate": rate,
        "distortion": distortion,
        "done_training": done,
        "timestamp": 123,
        "pid": 42,
    }


# ---------------------------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------------------------


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cwd = Path(os.getcwd()).resolve()
    base = tmp_path / "base"
    assert resolve_tracking_uri(None) == f"sqlite:///{cwd}/mlflow.db"
    assert resolve_tracking_uri(None, base) == f"sqlite:///{cwd}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///mlflow.db", base) == f"sqlite:///{base.resolve()}/mlflow.db"
    assert resolve_tracking_uri("sqlite:///./a/../m.db") == f"sqlite:///{cwd}/m.db"
    assert resolve_tracking_uri("sqlite:///m.db?timeout=20", base) == f"sqlite:///{base.resolve()}/m.db?timeout=20"
    assert resolve_tracking_uri("sqlite:////abs/m.db", base) == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("mlflow.db", base) == f"sqlite:///{base.resolve()}/mlflow.db"
    assert resolve_tracking_uri("./mlruns", base) == (base / "mlruns").resolve().as_uri()
    assert resolve_tracking_uri("file:mlruns", base) == (base / "mlruns").resolve().as_uri()
    for unchanged in ("http://127.0.0.1:5000", "https://mlflow.example.com/", "databricks", "databricks://prof",
                      "postgresql://u:p@127.0.0.1/db"):
        assert resolve_tracking_uri(unchanged, base) == unchanged
    # the callback resolves too
    cb = MLflowTracking("sqlite:///rel.db", "e", "s", "k", {})
    assert cb.tracking_uri == f"sqlite:///{cwd}/rel.db"


def test_contract_metrics_filter():
    assert "kl/0" not in CONTRACT_METRICS and "rate" in CONTRACT_METRICS
    result = {
        "rate": 1.0, "distortion": 2, "nelbo": float("nan"), "sse": float("inf"), "beta": True,
        "kl/0": 0.5, "kl/12": 0.1, "kl/x": 3.0, "kl/": 1.0, "train": {"loss": 3.0, "rate": 1.5},
        "dci/disentanglement": 0.4, "mig": "n/a", "junk": 1.0, "timestamp": 1, "pid": 7,
        "config": {"objective.beta": 1.0}, "time_this_iter_s": 0.1, "step": 10,
    }
    assert contract_metrics(result) == {
        "rate": 1.0, "distortion": 2.0, "kl/0": 0.5, "kl/12": 0.1, "train/loss": 3.0, "train/rate": 1.5,
        "dci/disentanglement": 0.4,
    }


def test_callback_pickles_without_client(store):
    cb = _callback(store, "pickled")
    cb.setup()
    state = pickle.loads(pickle.dumps(cb))
    assert state._client is None and state.parent_run_id is None and state.report_seconds == []
    assert (state.tracking_uri, state.sweep_key, state.spec) == (cb.tracking_uri, cb.sweep_key, cb.spec)
    cb.close("FINISHED")


# ---------------------------------------------------------------------------------------------------------------
# hooks driven by hand (no Tune loop)
# ---------------------------------------------------------------------------------------------------------------


def test_parent_run_tags_spec_and_artifacts_beside_db(store):
    cb = _callback(store, "parent", tags={"team": "rd"})
    cb.setup()
    parent = store.client.get_run(cb.parent_run_id)
    tags = parent.data.tags
    assert parent.info.run_name == "parent" and parent.info.status == "RUNNING"
    assert tags["bvae.sweep"] == "parent" and tags["bvae.sweep_key"] == "/abs/storage/parent"
    assert tags["team"] == "rd"
    for lib in ("torch", "ray", "optuna", "mlflow", "python"):
        assert tags[f"bvae.version.{lib}"]
    # /work/main is a git checkout: the commit is recorded
    if (Path.cwd() / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40
    spec = Path(store.client.download_artifacts(cb.parent_run_id, "spec.yaml", str(store.dir / "dl")))
    assert "name: parent" in spec.read_text()
    # artifacts live next to the sqlite file, not in ./mlruns of the cwd
    exp = store.client.get_experiment(cb.experiment_id)
    assert exp.artifact_location.startswith(str(store.dir / "mlartifacts"))
    assert find_parent_run(store.client, "exp-parent", "/abs/storage/parent").info.run_id == cb.parent_run_id
    assert find_parent_run(store.client, "exp-parent", "other") is None
    assert find_parent_run(store.client, "no-such-experiment", "x") is None
    cb.close("FINISHED")


def test_exactly_once_across_new_callbacks(store):
    key = "/abs/path/with 'quote\" and spaces/sweep"  # not expressible in an MLflow filter literal
    cb = _callback(store, "once", key=key)
    cb.setup()
    t1 = _fake_trial("t1", {"objective.beta": 2.0, "objective.schedule": "linear_capacity",
                            "objective.schedule.c_max": 5.0, "model.latent_dim": 4,
                            "dataset.eigenvalues": [4.0, 1.0], "model.likelihood": {"kind": "gaussian"}})
    t2 = _fake_trial("t2", {"objective.beta": 0.5})
    cb.on_trial_start(0, [t1, t2], t1)
    cb.on_trial_start(0, [t1, t2], t2)
    cb.on_trial_result(0, [t1, t2], t1, _report(1))
    cb.on_trial_result(0, [t1, t2], t2, _report(1))
    cb.close()  # the driver dies: parent and both children KILLED
    parent_id = cb.parent_run_id
    first = _children_by_trial(store.client, parent_id)
    assert {r.info.status for r in first.values()} == {"KILLED"}
    assert store.client.get_run(parent_id).info.status == "KILLED"
    cb.close()  # idempotent

    # A new driver: a new callback with the same key continues the same parent and child runs.
    cb2 = _callback(store, "once", key=key)
    cb2.setup()
    assert cb2.parent_run_id == parent_id
    assert store.client.get_run(parent_id).info.status == "RUNNING"
    cb2.on_trial_start(1, [t1, t2], t1)
    assert store.client.get_run(first["t1"].info.run_id).info.status == "RUNNING"
    cb2.on_trial_result(1, [t1, t2], t1, _report(2, done=True))
    cb2.on_trial_complete(1, [t1, t2], t1)
    cb2.on_experiment_end([SimpleNamespace(trial_id="t1", status="TERMINATED"),
                           SimpleNamespace(trial_id="t2", status="TERMINATED")])

    runs = _all_runs(store.client, "exp-once")
    assert len(runs) == 3  # one parent + one per trial, nothing more
    children = _children_by_trial(store.client, parent_id)
    assert {t: r.info.run_id for t, r in children.items()} == {t: r.info.run_id for t, r in first.items()}
    assert children["t1"].info.status == "FINISHED" and children["t1"].data.tags["bvae.status"] == "completed"
    assert children["t2"].info.status == "KILLED"  # never continued
    assert store.client.get_run(parent_id).info.status == "FINISHED"
    assert [m.step for m in store.client.get_metric_history(children["t1"].info.run_id, "rate")] == [1, 2]
    params = children["t1"].data.params
    assert params == {
        "objective.beta": "2.0", "objective.schedule": "linear_capacity", "objective.schedule.c_max": "5.0",
        "model.latent_dim": "4", "dataset.eigenvalues": "[4.0, 1.0]", "model.likelihood": '{"kind": "gaussian"}',
    }
    assert set(children["t1"].data.metrics) == {"rate", "distortion"}  # no timestamp/pid/done_training
    assert len(cb.report_seconds) == 2 and all(s >= 0 for s in cb.report_seconds)


def test_error_and_failure_outcomes(store):
    cb = _callback(store, "outcomes")
    cb.setup()
    trials = [_fake_trial(t) for t in ("nan", "missing", "err", "pruned")]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    cb.on_trial_result(0, trials, trials[0], _report(1, distortion=float("nan"), done=True))
    cb.on_trial_result(0, trials, trials[1], {"step": 1, "nelbo": 3.0, "done_training": True})
    cb.on_trial_result(0, trials, trials[3], _report(1, done=False))
    for t in (trials[0], trials[1], trials[3]):
        cb.on_trial_complete(0, trials, t)
    cb.on_trial_error(0, trials, trials[2])
    cb.on_experiment_end(trials)
    got = {t: (r.info.status, r.data.tags["bvae.status"])
           for t, r in _children_by_trial(store.client, cb.parent_run_id).items()}
    assert got == {"nan": ("FAILED", "failed"), "missing": ("FAILED", "failed"),
                   "err": ("FAILED", "error"), "pruned": ("KILLED", "pruned")}
    nan_run = _children_by_trial(store.client, cb.parent_run_id)["nan"]
    assert "distortion" not in nan_run.data.metrics and nan_run.data.metrics["rate"] == 1.0


def test_interrupted_sweep_ends_killed_and_resumes(store):
    """Ctrl+C: Tune marks running trials TERMINATED and calls only on_experiment_end."""
    cb = _callback(store, "interrupted")
    cb.setup()
    done, cut = _fake_trial("done"), _fake_trial("cut")
    for t in (done, cut):
        cb.on_trial_start(0, [done, cut], t)
        cb.on_trial_result(0, [done, cut], t, _report(1, done=t is done))
    cb.on_trial_complete(0, [done, cut], done)
    done.status = cut.status = "TERMINATED"
    cb.on_experiment_end([done, cut])
    runs = _children_by_trial(store.client, cb.parent_run_id)
    assert (runs["cut"].info.status, runs["cut"].data.tags["bvae.status"]) == ("KILLED", "interrupted")
    assert (runs["done"].info.status, runs["done"].data.tags["bvae.status"]) == ("FINISHED", "completed")
    assert store.client.get_run(cb.parent_run_id).info.status == "KILLED"
    cb.close()  # after on_experiment_end: nothing more to do

    resumed = _callback(store, "interrupted")
    resumed.setup()
    resumed.on_trial_start(1, [cut], cut)
    run = store.client.get_run(runs["cut"].info.run_id)
    assert (run.info.status, run.data.tags["bvae.status"]) == ("RUNNING", "running")
    resumed.on_trial_result(1, [cut], cut, _report(2, done=True))
    resumed.on_trial_complete(1, [cut], cut)
    resumed.on_experiment_end([cut])
    assert store.client.get_run(cb.parent_run_id).info.status == "FINISHED"
    assert len(_all_runs(store.client, "exp-interrupted")) == 3


def test_a_store_that_stops_answering_delays_writes_and_loses_none(store, caplog):
    cb = _callback(store, "robust")
    cb.setup()
    cb.RETRY_S = 0.0
    trial = _fake_trial("t")
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_result(0, [trial], trial, _report(1))

    class Broken:
        def __getattr__(self, name):
            raise ConnectionError("tracking server went away")

    real, cb._client = cb._client, Broken()
    with caplog.at_level(logging.WARNING, logger="sweeps.tracking"):
        cb.on_trial_result(0, [trial], trial, _report(2))  # no exception: the sweep goes on
        cb.on_trial_complete(0, [trial], trial)
        assert cb.pending_writes == 2
        cb._client = real  # the store answers again
        cb.on_step_end(1, [trial])
    assert cb.pending_writes == 0 and cb.delivered_late == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("went away" in m for m in messages) == 1  # one line when it went, not one per write
    assert any("answers again" in m and "2 kept writes delivered" in m for m in messages)
    assert len(cb.report_seconds) == 2
    trial.status = "TERMINATED"
    cb.on_experiment_end([trial])
    run = _children_by_trial(store.client, cb.parent_run_id)["t"]
    assert [m.step for m in store.client.get_metric_history(run.info.run_id, "rate")] == [1, 2]  # none lost
    assert run.info.status != "RUNNING"


def test_unreachable_server_fails_setup_naming_the_uri(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    cb = MLflowTracking(uri, "e", "s", "k", {})
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}"):
        cb.setup()
    cb.close()  # nothing to close: no error


# ---------------------------------------------------------------------------------------------------------------
# real Tune runs
# ---------------------------------------------------------------------------------------------------------------


def test_tuner_run_logs_parent_children_params_and_contract_metrics(local_ray, store, tmp_path):
    cb = _callback(store, "tuned")
    space = {
        "objective.beta": 1.0,
        "model.latent_dim": 2,
        "objective.schedule": "linear_capacity",
        "objective.schedule.c_max": 5.0,
        "case": tune.grid_search(["ok", "ok2", "nan", "prune"]),
    }
    tuner = tune.Tuner(
        rd_trainable,
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name="tuned", storage_path=str(tmp_path / "ray"), callbacks=[cb], verbose=0,
            stop=_stop_prune_case,
        ),
    )
    results = tuner.fit()
    assert not results.errors

    client = store.client
    runs = _all_runs(client, "exp-tuned")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["bvae.sweep"] == "tuned"
    assert parents[0].info.status == "FINISHED"
    children = _children_by_trial(client, parents[0].info.run_id)
    assert len(runs) == 5 and len(children) == 4
    assert set(children) == {r.metrics["trial_id"] for r in results}

    by_case = {r.data.params["case"]: r for r in children.values()}
    for case, run in by_case.items():
        assert run.data.params == {
            "objective.beta": "1.0", "model.latent_dim": "2", "objective.schedule": "linear_capacity",
            "objective.schedule.c_max": "5.0", "case": case,
        }
        assert run.data.tags["bvae.sweep"] == "tuned"
        assert run.info.run_name == f"tuned-{run.data.tags['bvae.trial_id']}"
        # only contract metrics: no junk, no Tune bookkeeping, no config/*; 'beta' was inf every time
        assert set(run.data.metrics) <= CONTRACT and {"rate", "kl/0"} <= set(run.data.metrics)

    for case in ("ok", "ok2"):
        run = by_case[case]
        assert (run.info.status, run.data.tags["bvae.status"]) == ("FINISHED", "completed")
        assert set(run.data.metrics) == CONTRACT
        history = client.get_metric_history(run.info.run_id, "rate")
        assert [m.step for m in history] == [10, 20, 30]
        assert math.isclose(history[-1].value, 4.0 / 3)
    nan = by_case["nan"]
    assert (nan.info.status, nan.data.tags["bvae.status"]) == ("FAILED", "failed")
    assert [m.step for m in client.get_metric_history(nan.info.run_id, "distortion")] == [10, 20]
    pruned = by_case["prune"]
    assert (pruned.info.status, pruned.data.tags["bvae.status"]) == ("KILLED", "pruned")
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "rate")] == [10, 20]
    # every report was logged, and timed
    assert len(cb.report_seconds) == 3 + 3 + 3 + 2


def test_tuner_restore_continues_the_same_runs(local_ray, store, tmp_path):
    """An errored trial resumed by Tuner.restore (new, unpickled callback) continues its own run."""
    marker = tmp_path / "may-pass"
    cb = _callback(store, "restored")
    storage = tmp_path / "ray"
    tuner = tune.Tuner(
        rd_trainable,
        param_space={"objective.beta": tune.grid_search([1.0, 2.0]),
                     "fail_unless": tune.grid_search([None, str(marker)])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="restored", storage_path=str(storage), callbacks=[cb], verbose=0),
    )
    first = tuner.fit()
    assert len(first.errors) == 2  # both trials with a marker crash at their second report
    client = store.client
    parent_id = find_parent_run(client, "exp-restored", cb.sweep_key).info.run_id
    before = _children_by_trial(client, parent_id)
    assert len(before) == 4
    crashed = {t for t, r in before.items() if r.info.status == "FAILED"}
    assert len(crashed) == 2 and all(before[t].data.tags["bvae.status"] == "error" for t in crashed)
    assert all(before[t].info.status == "FINISHED" for t in set(before) - crashed)

    marker.touch()
    # resume_errored keeps the trial ids and resumes from the last checkpoint. (restart_errored would make new
    # trials with new ids, so new runs, leaving the errored ones FAILED: that is a different trial to Tune.)
    restored = tune.Tuner.restore(str(storage / "restored"), rd_trainable, resume_errored=True)
    second = restored.fit()
    assert not second.errors

    runs = _all_runs(client, "exp-restored")
    assert len(runs) == 5  # still one parent + one run per trial
    after = _children_by_trial(client, parent_id)
    assert {t: r.info.run_id for t, r in after.items()} == {t: r.info.run_id for t, r in before.items()}
    assert {r.info.status for r in after.values()} == {"FINISHED"}
    assert {r.data.tags["bvae.status"] for r in after.values()} == {"completed"}
    assert client.get_run(parent_id).info.status == "FINISHED"
    for t in crashed:  # resumed from the checkpoint of step 10 in the same run: one continuous history
        steps = [m.step for m in client.get_metric_history(after[t].info.run_id, "rate")]
        assert steps == [10, 20, 30]


def test_a_store_behind_a_folder_this_user_cannot_enter_is_a_value_error(monkeypatch, tmp_path):
    """PermissionError escaped the store checks as exit 1 ("failed: PermissionError") instead of one line, exit 2."""
    from pathlib import Path

    from sweeps.store import check_local_store

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "is_dir", denied)
    with pytest.raises(ValueError, match=r"cannot read .*m\.db \(Permission denied\)$"):
        check_local_store(f"sqlite:///{tmp_path}/m.db")
