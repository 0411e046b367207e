"""The fault matrix: faults injected on purpose (``BVAE_FAULTS``, a failing Ray start), real Ray, real MLflow
stores, real Optuna. Each test asserts the end state: every trial finished or failed with a reason on its run, one
MLflow run per trial, none left RUNNING, and the frontier equal to a clean run's where the fault allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sweeps import runner
from sweeps.faults import FaultPlan, InjectedFault, trial_key
from sweeps.spec import parse_spec
from sweeps.store import child_runs, find_parent_run
from test_sweep import GAUSSIAN_BASE

ROOT_CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"

BASE = GAUSSIAN_BASE  # tiny linear VAEs on a Gaussian source: seconds a trial


def _spec(tmp_path: Path, name: str, trials: int = 4, max_failures: int = 1, store: str = "mlflow.db") -> dict:
    return {
        "name": name,
        "base": BASE,
        "search": {"trials": trials, "seed": 3, "concurrency": 1, "sampler": "random", "max_failures": max_failures,
                   "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}},
        "tracking": {"uri": f"sqlite:///{tmp_path}/{store}"},
        "storage": {"path": str(tmp_path / "ray_results")},
        "ray": {"num_cpus": 2},
    }  # fmt: skip


def _bvae(tmp_path: Path, *args: str, faults: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BVAE_FAULTS", None)
    if faults is not None:
        env["BVAE_FAULTS"] = json.dumps(faults)
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def _runs(uri: str, name: str, key: str):
    client = MlflowClient(uri)
    parent = find_parent_run(client, name, key)
    assert parent is not None, f"no parent run of {name} in {uri}"
    return client, parent, child_runs(client, parent.info.run_id)


def _points(children) -> dict[str, tuple[float, float]]:
    return {r.data.params["objective.beta"]: (r.data.metrics["rate"], r.data.metrics["distortion"]) for r in children}


def test_fault_plan_selects_a_stable_share_and_spares_restored_attempts():
    plan = FaultPlan(raise_at_step=150, fraction=0.25, seed=1)
    trials = [{"objective.beta": 0.1 * i, "model.latent_dim": 4} for i in range(400)]
    chosen = [p for p in trials if plan.selects(trial_key(p))]
    assert 60 < len(chosen) < 140
    # by the parameters, whatever their order (Ray's trial ids are random: they play no part)
    assert chosen == [p for p in trials if plan.selects(trial_key(dict(reversed(list(p.items())))))]
    with pytest.raises(InjectedFault, match="trial ab12cd34 failed on purpose at step 200"):
        plan.check("ab12cd34", chosen[0], 200, restored=False)
    plan.check("ab12cd34", chosen[0], 200, restored=True)  # the retry from a checkpoint carries on
    plan.check("ab12cd34", chosen[0], 100, restored=False)  # not there yet


@pytest.mark.slow
def test_trials_raising_mid_training_are_retried_from_their_checkpoints_to_a_clean_runs_frontier(tmp_path):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    for folder in (clean, faulty):
        folder.mkdir()
        (folder / "spec.yaml").write_text(yaml.safe_dump(_spec(folder, "retry")))
    assert _bvae(clean, "sweep", "run", "spec.yaml").returncode == 0
    # the trials are chosen by their parameters: the same (seeded) four every run, one or more of them here
    done = _bvae(faulty, "sweep", "run", "spec.yaml", faults={"raise_at_step": 150, "fraction": 0.5, "seed": 0})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4/4 trials completed" in done.stdout
    _, _, clean_runs = _runs(f"sqlite:///{clean}/mlflow.db", "retry", str(clean / "ray_results" / "retry"))
    client, parent, runs = _runs(f"sqlite:///{faulty}/mlflow.db", "retry", str(faulty / "ray_results" / "retry"))
    assert len(runs) == len({r.data.tags["bvae.trial_id"] for r in runs}) == 4  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs) and parent.info.status == "FINISHED"
    # the retried trials continued from their checkpoints: the same points as the clean sweep, bit for bit (CPU)
    assert _points(runs) == _points(clean_runs)
    retried = [r for r in runs if int(r.data.tags.get("bvae.retries", "0")) >= 1]
    assert retried, "no trial was retried: the fault did not fire"
    # each retry is one line naming the trial and its error, not Ray's traceback (BVAE_DEBUG=1 shows that)
    for run in retried:
        assert (f"trial {run.data.tags['bvae.trial_id']} errored; retried from its last checkpoint (retry 1): "
                f"sweeps.faults.InjectedFault: BVAE_FAULTS: trial") in done.stderr, done.stderr[-3000:]  # fmt: skip
    assert "Traceback" not in done.stderr and "Trial task failed" not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_errored_trials_a_resume_trains_again_end_completed_in_optuna_and_mlflow(tmp_path):
    """Out of retries (``max_failures: 0``) the trials end in an error, told FAIL to Optuna; ``bvae sweep resume``
    trains them again from their checkpoints. Their runs said FINISHED but kept the error as ``bvae.reason``, and
    Optuna never heard of their end."""
    from sweeps.search import SweepSearch

    data = _spec(tmp_path, "errored", trials=2, max_failures=0)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    first = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"raise_at_step": 150})
    assert first.returncode == 1 and "0/2 trials completed" in first.stdout, first.stderr[-3000:]  # not done
    assert "bvae sweep: 2 trials errored (each run's bvae.reason tag says why); train them again from their last " \
           "checkpoints with: bvae sweep resume spec.yaml" in first.stderr  # fmt: skip
    assert first.stderr.count(" errored: sweeps.faults.InjectedFault: BVAE_FAULTS: trial ") == 2, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and "Trials did not complete" not in first.stderr, first.stderr[-3000:]
    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml")
    assert resumed.returncode == 0 and "2/2 trials completed" in resumed.stdout, resumed.stderr[-3000:]
    assert resumed.stderr.count("had errored and trains again") == 2
    client, parent, runs = _runs(data["tracking"]["uri"], "errored", str(tmp_path / "ray_results" / "errored"))
    assert len(runs) == 2
    for run in runs:
        assert (run.info.status, run.data.tags["bvae.status"], run.data.tags.get("bvae.reason")) == \
               ("FINISHED", "completed", None)  # fmt: skip
    searcher = SweepSearch.__new__(SweepSearch)
    searcher.restore(str(max((tmp_path / "ray_results" / "errored").glob("searcher-state-*.pkl"))))
    trials = searcher.study.trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    told = {round(t.params["objective.beta"], 9): tuple(t.values) for t in trials[2:]}
    assert told == {round(float(r.data.params["objective.beta"]), 9): (r.data.metrics["rate"], r.data.metrics["distortion"])
                    for r in runs}  # fmt: skip


@pytest.mark.slow
def test_resume_with_another_tracking_uri_logs_the_resumed_trials_there(tmp_path):
    data = _spec(tmp_path, "moved", trials=2, max_failures=0)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    first = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"raise_at_step": 150})  # every trial errors once
    assert first.returncode == 1, first.stderr[-3000:]
    assert "0/2 trials completed" in first.stdout
    key = str(tmp_path / "ray_results" / "moved")
    _, _, old = _runs(data["tracking"]["uri"], "moved", key)
    assert {r.info.status for r in old} == {"FAILED"} and all(r.data.tags.get("bvae.reason") for r in old)

    new_uri = f"sqlite:///{tmp_path}/moved.db"
    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml", "--tracking-uri", new_uri)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"note: tracking.uri: the sweep started in {data['tracking']['uri']}; the trials that ended before this "
            f"resume stay there, and only what it trains now is tracked in {new_uri}") in resumed.stderr  # fmt: skip
    client, parent, runs = _runs(new_uri, "moved", key)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert all(max(m.step for m in client.get_metric_history(r.info.run_id, "rate")) == 300 for r in runs)
    _, _, old_after = _runs(data["tracking"]["uri"], "moved", key)
    assert [r.info.status for r in old_after] == [r.info.status for r in old]  # the old store was not written to


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["first_report", "final_frontier"])
def test_a_driver_killed_then_resumed_completes_with_one_run_per_trial(tmp_path, moment):
    data = _spec(tmp_path, "killed", trials=3)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    killed = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"kill_driver_at": moment})
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, as a lost machine
    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3/3 trials completed" in resumed.stdout
    client, parent, runs = _runs(data["tracking"]["uri"], "killed", str(tmp_path / "ray_results" / "killed"))
    assert len(runs) == len({r.data.tags["bvae.trial_id"] for r in runs}) == 3
    assert all(r.info.status == "FINISHED" for r in runs) and client.get_run(parent.info.run_id).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"frontier.parquet", "rd_frontier.png"} <= artifacts  # the final frontier was published


@pytest.mark.slow
def test_ctrl_c_before_any_trial_reported_leaves_the_parent_run_killed_not_finished(tmp_path):
    """Trials cut off before their first evaluation have no MLflow run yet: the parent must still say KILLED (a resume
    continues it), not FINISHED."""
    import signal

    data = _spec(tmp_path, "early", trials=2)
    data["base"] = {**BASE, "train": {**BASE["train"], "steps": 1_000_000, "eval_every": 1_000_000}}  # no report soon
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BVAE_FAULTS", None)
    driver = subprocess.Popen([sys.executable, "-m", "sweeps", "sweep", "run", "spec.yaml"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = driver.stderr.readline()
        assert first.startswith("sweep early: 2 trials"), first
        time.sleep(12)  # Ray up, the trials training, none near an evaluation
        driver.send_signal(signal.SIGINT)  # Ctrl+C
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    assert "INTERRUPTED" in out and "0/2 trials completed" in out  # of the sweep's 2, not of those started
    # the stop in the project's words, not Tune's timestamped WARNING line
    assert "bvae sweep: stopping; Tune saves the sweep's state (Ctrl+C again skips that)" in err, err[-3000:]
    assert "Stop signal received" not in err, err[-3000:]
    _, parent, runs = _runs(data["tracking"]["uri"], "early", str(tmp_path / "ray_results" / "early"))
    assert parent.info.status == "KILLED" and "RUNNING" not in {r.info.status for r in runs}


@pytest.mark.slow
def test_ctrl_c_ends_the_sweep_interrupted_with_the_resume_command_and_resume_completes(tmp_path):
    import signal

    data = _spec(tmp_path, "ctrlc", trials=3)  # run with --set search.trials=2: the resume line must carry it
    data["base"] = {**BASE, "train": {**BASE["train"], "steps": 3000, "eval_every": 500}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BVAE_FAULTS", None)
    driver = subprocess.Popen([sys.executable, "-m", "sweeps", "sweep", "run", "spec.yaml", "--set", "search.trials=2"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = []
        for line in driver.stderr:  # progress lines: wait until a trial is training
            seen.append(line)
            if "step 500/3000" in line:
                break
        driver.send_signal(signal.SIGINT)  # Ctrl+C
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    err = "".join(seen) + err
    assert driver.returncode == 130, err[-3000:]
    resume_line = "bvae sweep resume spec.yaml --set search.trials=2"
    assert f"Continue it with: {resume_line}\n" in err and "Tuner.restore" not in out + err
    statuses = [line.split()[-1] for line in out.split("\n\n")[0].splitlines()[2:]]  # the summary table's rows
    assert "INTERRUPTED" in statuses and set(statuses) <= {"COMPLETED", "INTERRUPTED"}, out
    client, parent, runs = _runs(data["tracking"]["uri"], "ctrlc", str(tmp_path / "ray_results" / "ctrlc"))
    assert parent.info.status == "KILLED" and "RUNNING" not in {r.info.status for r in runs}

    other = _bvae(tmp_path, "sweep", "resume", "spec.yaml")  # without the --set: another sweep under its name
    assert other.returncode == 2 and other.stderr.strip().splitlines()[-1].startswith(
        "bvae sweep: error: search.trials: this spec is not the one sweep 'ctrlc' was started with (search.trials: started "
        "with 2, given 3); resume it with the spec and --set values it was started with, e.g. --set search.trials=2"
    ), other.stderr[-3000:]
    assert _runs(data["tracking"]["uri"], "ctrlc", str(tmp_path / "ray_results" / "ctrlc"))[1].info.status == "KILLED"
    resumed = _bvae(tmp_path, *resume_line.split()[1:])  # the line as printed
    assert resumed.returncode == 0 and "2/2 trials completed" in resumed.stdout, resumed.stderr[-3000:]
    assert "/3 done" not in resumed.stderr  # progress counts the sweep's trials


_SLOW_WRITER = """
import sys, time
from sweeps.atomic_storage import atomic_local_filesystem
with atomic_local_filesystem().open_output_stream(sys.argv[1]) as stream:
    stream.write(b'{"trial_data": [' + b'0,' * 100000)
    print("half written", flush=True)
    time.sleep(60)
    stream.write(b'0]}')
"""


def test_a_writer_killed_mid_file_leaves_the_storage_file_as_it_was(tmp_path):
    """Tune's storage on a folder (sweeps.atomic_storage): a driver killed while Tune copies its state there leaves
    the previous state whole — Tune, finding a truncated state, would start the sweep over."""
    import pyarrow.fs as pafs

    from sweeps.atomic_storage import atomic_local_filesystem, unreadable_experiment_state

    state = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text('{"trial_data": []}')
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(state)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "half written"
    writer.kill()  # SIGKILL, as a lost driver
    writer.wait(30)
    assert state.read_text() == '{"trial_data": []}' and unreadable_experiment_state(str(tmp_path)) is None
    # a whole folder copied in (as Tune's sync does) arrives whole, through the same file system
    staged = tmp_path / "staged"
    (staged / "trial").mkdir(parents=True)
    (staged / "trial" / "checkpoint.pt").write_bytes(bytes(range(256)) * 4096)
    pafs.copy_files(str(staged), str(tmp_path / "copy"), destination_filesystem=atomic_local_filesystem())
    assert (tmp_path / "copy" / "trial" / "checkpoint.pt").read_bytes() == bytes(range(256)) * 4096
    assert not [p for p in (tmp_path / "copy").rglob(".*")]  # no temporary file left behind


def _slow_atomic_storage():
    """The atomic local storage, slow to create a folder: a copy to storage that reads its files a while after it
    started (as one that copies a trial's checkpoints first)."""
    import pyarrow.fs as pafs

    from sweeps.atomic_storage import AtomicLocalHandler

    class SlowHandler(AtomicLocalHandler):
        def create_dir(self, path, recursive):
            time.sleep(1.5)
            super().create_dir(path, recursive)

    return pafs.PyFileSystem(SlowHandler())


@pytest.mark.parametrize("wait_first", [False, True])
def test_a_state_save_during_tunes_copy_to_storage_waits_for_it(tmp_path, wait_first):
    """Tune rewrites its state file in place while its background copy may still be reading it (Ray 2.60): the copy
    publishes a cut-off state. ``sweeps.state_saves`` makes the save wait for the copy in flight; without it (the
    first case) the race is real, which is what makes the second case's check mean something."""
    from ray.train._internal.storage import _FilesystemSyncer

    from sweeps.state_saves import finish_copy_in_flight

    staging, storage = tmp_path / "staging", tmp_path / "storage"
    staging.mkdir()
    state = staging / "experiment_state-2026-01-01_00-00-00.json"
    whole = json.dumps({"trial_data": ["x" * 1000] * 100}).encode()
    state.write_bytes(whole)
    syncer = _FilesystemSyncer(storage_filesystem=_slow_atomic_storage(), sync_period=0, sync_timeout=60)
    assert syncer.sync_up(str(staging), str(storage))
    time.sleep(0.1)  # the copy is under way, the file not yet read
    if wait_first:
        finish_copy_in_flight(syncer)
        assert syncer._sync_process is None
    with open(state, "w") as rewrite:  # Ray's save: open(…, "w"), then json.dump
        rewrite.write('{"trial_data": [')
        syncer.wait()  # (without the wait above: the copy finishes reading the file as it is now)
        rewrite.write("]}")
    published = (storage / state.name).read_bytes()
    if wait_first:
        assert published == whole
    else:
        assert published == b'{"trial_data": [' or published == b""  # cut off: the race the guard closes


def test_the_state_save_guard_wraps_tunes_save_once():
    from ray.tune.execution.tune_controller import TuneController

    from sweeps.state_saves import serialize_state_saves

    serialize_state_saves()
    guarded = TuneController.save_to_dir
    serialize_state_saves()
    assert TuneController.save_to_dir is guarded and guarded.__wrapped__.__name__ == "save_to_dir"


@pytest.mark.slow
def test_a_truncated_sweep_state_at_resume_is_named_and_nothing_starts(tmp_path):
    data = _spec(tmp_path, "cut", trials=1)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    assert _bvae(tmp_path, "sweep", "run", "spec.yaml").returncode == 0
    state = max((tmp_path / "ray_results" / "cut").glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[:4096])  # as an in-place copy cut off by a kill (Ray's own sync, measured)
    client, parent, before = _runs(data["tracking"]["uri"], "cut", str(tmp_path / "ray_results" / "cut"))

    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml")
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    lines = [line for line in resumed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(state) in lines[0] and "unreadable" in lines[0], resumed.stderr
    _, after_parent, after = _runs(data["tracking"]["uri"], "cut", str(tmp_path / "ray_results" / "cut"))
    assert [r.info.run_id for r in after] == [r.info.run_id for r in before]  # Tune did not start the sweep over
    assert after_parent.info.status == parent.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("searcher_save", ["newer", "older"])
def test_a_searcher_state_of_another_save_than_the_saved_trials_resumes_to_the_planned_trials(tmp_path, searcher_save):
    """A driver killed while Tune copied its state files (sweeps.searcher_state). ``newer``: the searcher's state is
    of the save after the first trial ended and the next was asked for; without the fix that asked-for trial holds
    the only concurrency slot and the resume waits forever. ``older``: the searcher's state is of the save before the
    first trial was asked for; without the fix Optuna never hears of that trial and a fourth trial is created."""
    import ray.cloudpickle as cloudpickle

    from sweeps.search import SweepSearch, build_searcher

    data = _spec(tmp_path, "paired", trials=3)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    killed = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"kill_driver_at": "first_report"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    folder = tmp_path / "ray_results" / "paired"
    generator_file = max(folder.glob("search_gen_state-*.json"))
    searcher_file = max(folder.glob("searcher-state-*.pkl"))
    generator = cloudpickle.loads(generator_file.read_bytes())
    (first,) = generator["name:ConcurrencyLimiter"]["live_trials"]
    if searcher_save == "newer":
        searcher = SweepSearch.__new__(SweepSearch)  # Ray's own restore of the saved searcher, then what it did next
        searcher.restore(str(searcher_file))
        searcher.on_trial_complete(first, result={"rate": 0.6, "distortion": 6.0, "done_training": True})
        lost_beta = searcher.suggest("lost0001")["objective.beta"]
        generator["counter"] += 1
        generator["name:ConcurrencyLimiter"]["live_trials"] = {"lost0001"}
    else:  # the state the sweep started with: nothing asked
        spec = parse_spec({**data, "search": {**data["search"], "cohort": 1}})  # auto resolves to 1 on CPUs
        searcher = build_searcher(spec, concurrency=1).searcher.searcher
        generator["counter"] = 0
        generator["name:ConcurrencyLimiter"].update(live_trials=set(), num_unfinished_live_trials=0)
    searcher.save(str(searcher_file))
    generator_file.write_bytes(cloudpickle.dumps(generator))

    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3/3 trials completed" in resumed.stdout
    said = "trial lost0001 was asked for but not saved" if searcher_save == "newer" else f"trial {first} was saved after"
    assert said in resumed.stderr
    client, parent, runs = _runs(data["tracking"]["uri"], "paired", str(folder))
    betas = {r.data.tags["bvae.trial_id"]: float(r.data.params["objective.beta"]) for r in runs}
    assert len(betas) == 3 and "lost0001" not in betas and all(r.info.status == "FINISHED" for r in runs)
    if searcher_save == "newer":
        assert any(abs(b - lost_beta) < 1e-9 for t, b in betas.items() if t != first)  # the asked values trained
    resumed_searcher = SweepSearch.__new__(SweepSearch)
    resumed_searcher.restore(str(max(folder.glob("searcher-state-*.pkl"))))
    trials = resumed_searcher.study.trials
    assert len(trials) == 3 and not [t for t in trials if t.state.name == "RUNNING"]  # all told, none asked twice
    if searcher_save == "older":  # the first trial, given to Optuna with its values, was told its end
        assert abs(trials[0].params["objective.beta"] - betas[first]) < 1e-9 and trials[0].state.name == "COMPLETE"


@pytest.mark.slow
def test_a_corrupt_checkpoint_at_resume_is_named_and_the_previous_one_used(tmp_path):
    data = _spec(tmp_path, "corrupt", trials=1, max_failures=0)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    first = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"raise_at_step": 250})  # errors after 2 checkpoints
    assert first.returncode == 1 and "0/1 trials completed" in first.stdout, first.stderr[-3000:]
    checkpoints = sorted((tmp_path / "ray_results" / "corrupt").glob("*/checkpoint_*/checkpoint.pt"))
    assert len(checkpoints) == 2
    latest = checkpoints[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as by a lost disk write

    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1/1 trials completed" in resumed.stdout
    line = next(l for l in resumed.stderr.splitlines() if "is unreadable" in l)
    assert str(latest) in line and f"restored from {checkpoints[0].parent}" in line and "(step 100)" in line
    client, _, runs = _runs(data["tracking"]["uri"], "corrupt", str(tmp_path / "ray_results" / "corrupt"))
    assert runs[0].info.status == "FINISHED" and "is unreadable" in runs[0].data.tags["bvae.notice"]
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "rate")]
    assert max(steps) == 300 and steps.count(200) == 2  # step 200 trained again from the checkpoint at 100


def test_the_parent_run_ends_failed_when_ray_cannot_start(tmp_path, monkeypatch):
    data = _spec(tmp_path, "noray", trials=2)

    def refuse(spec):
        raise ConnectionError("Ray refused to start (injected)")

    monkeypatch.setattr(runner, "init_ray", refuse)
    with pytest.raises(ConnectionError, match="injected"):
        runner.run_sweep(parse_spec(data))
    client = MlflowClient(data["tracking"]["uri"])
    parent = find_parent_run(client, "noray", str(tmp_path / "ray_results" / "noray"))
    assert parent is not None and parent.info.status == "FAILED"


def test_a_ctrl_c_that_cuts_the_sweep_short_still_names_the_resume(tmp_path, monkeypatch, capsys):
    """A second Ctrl+C (Tune stops at once) or one during start-up reaches the command as KeyboardInterrupt: the
    line still says how to continue from what was saved, with the run's --set values."""
    from sweeps import cli

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_sweep", cut_short)
    spec = ROOT_CONFIGS / "quickstart.yaml"
    assert cli.main(["sweep", "run", str(spec), "--set", "search.trials=3"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bvae sweep: interrupted; what Tune had saved resumes with: bvae sweep resume {spec} "
                   f"--set search.trials=3"], err  # fmt: skip
