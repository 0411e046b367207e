"""One fact, one place: how a trial ended, which run is the sweep, what a trial's config tags say, provenance, and a
CLI for reading the store that never imports Ray or Optuna. Real MLflow stores (sqlite), no mocks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeps import store
from sweeps.outcome import DONE_KEY, trial_outcome
from sweeps.search import trial_state
from sweeps.tracking import describe_trial

ROOT = Path(__file__).resolve().parents[1]

RESULTS = {
    "none": None,
    "empty": {},
    "nan rate": {"rate": math.nan, "distortion": 2.0, DONE_KEY: True},
    "missing distortion": {"rate": 1.0, DONE_KEY: True},
    "stopped early": {"rate": 1.0, "distortion": 2.0, DONE_KEY: False},
    "trained to the end": {"rate": 1.0, "distortion": 2.0, DONE_KEY: True},
}
EXPECTED = {  # label, bvae.status, MLflow status, Optuna state
    "none": ("FAILED", "failed", "FAILED", "FAIL"),
    "empty": ("FAILED", "failed", "FAILED", "FAIL"),
    "nan rate": ("FAILED", "failed", "FAILED", "FAIL"),
    "missing distortion": ("FAILED", "failed", "FAILED", "FAIL"),
    "stopped early": ("PRUNED", "pruned", "KILLED", "PRUNED"),
    "trained to the end": ("COMPLETED", "completed", "FINISHED", "COMPLETE"),
}


@pytest.mark.parametrize("case", list(RESULTS))
def test_progress_tracking_and_optuna_agree_on_how_a_trial_ended(case):
    result = RESULTS[case]
    outcome = trial_outcome(result)
    assert (outcome.label, outcome.status_tag, outcome.run_status, outcome.optuna_state) == EXPECTED[case]
    state, values = trial_state(result, ["rate", "distortion"], error=False)  # what Optuna is told
    assert state == optuna.trial.TrialState[outcome.optuna_state]
    assert (values is not None) == (case == "trained to the end")
    if not outcome.completed and outcome.label == "FAILED":
        assert outcome.reason  # a failed run says why


def test_an_errored_trial_is_an_error_everywhere():
    result = RESULTS["trained to the end"]
    assert trial_outcome(result, error=True).label == "ERROR"  # the progress lines and the summary table
    assert trial_state(result, ["rate", "distortion"], error=True)[0] == optuna.trial.TrialState.FAIL
    assert trial_outcome(result, error=True).run_status == "FAILED"


SPEC = {
    "name": "tags",
    "base": {"dataset": {"name": "blobs"}, "model": {"arch": "mlp", "latent_dim": 4},
             "train": {"steps": 100, "eval_every": 50}},
    "search": {"trials": 2, "space": {
        "objective.beta": {"log_uniform": [0.5, 8.0]},
        "objective.schedule": {"choice": [{"kind": "constant"},
                                          {"kind": "linear_capacity", "c_max": {"uniform": [5, 20]}, "gamma": 100}]}}},
}  # fmt: skip


def test_capacity_trials_neither_log_nor_tag_a_beta_they_do_not_use():
    params, tags = describe_trial(SPEC, {"objective.beta": 3.5, "objective.schedule": "linear_capacity",
                                         "objective.schedule.c_max": 12.0})  # fmt: skip
    assert "objective.beta" not in params and params["objective.schedule.c_max"] == 12.0
    assert "bvae.config.beta" not in tags
    assert tags["bvae.config.c_max"] == "12.0" and tags["bvae.config.gamma"] == "100.0"
    assert tags["bvae.config.schedule"] == "linear_capacity" and tags["bvae.config.latent_dim"] == "4"
    params, tags = describe_trial(SPEC, {"objective.beta": 3.5, "objective.schedule": "constant"})
    assert params["objective.beta"] == 3.5 and tags["bvae.config.beta"] == "3.5" and "bvae.config.c_max" not in tags


def test_config_tags_of_a_trial_the_spec_cannot_resolve_raise_instead_of_going_blank():
    with pytest.raises(KeyError):  # the chosen schedule's c_max was never sampled: a bug, not a blank β
        describe_trial(SPEC, {"objective.beta": 3.5, "objective.schedule": "linear_capacity"})


# ---------------------------------------------------------------- which run is the sweep
def _parent(client, experiment_id, name, key, start):
    run = client.create_run(experiment_id, start_time=start, tags={store.TAG_SWEEP: name, store.TAG_SWEEP_KEY: key})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_one_rule_finds_the_sweep_whether_by_name_by_key_or_by_the_tracking_callback(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e")
    old_a = _parent(client, exp, "rd", "/store/a/rd", 1000)
    _parent(client, exp, "rd", "/store/a/rd", 2000)  # a duplicate of sweep a, made later by a race
    b = _parent(client, exp, "rd", "/store/b/rd", 1500)
    # by key (what the tracking callback and a spec file use): the oldest parent of that sweep, never the duplicate
    assert store.find_parent_run(client, "e", "/store/a/rd").info.run_id == old_a
    assert store.find_sweep(client, "rd", sweep_key="/store/a/rd").parent_run_id == old_a
    # by name: among different sweeps of that name, the one started last — judged by each sweep's first parent
    assert store.find_sweep(client, "rd").parent_run_id == b
    assert store.find_sweep(client, old_a).parent_run_id == old_a  # by parent run id


def test_run_lookups_read_every_page(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e")
    ids = {_parent(client, exp, f"s{i}", f"k{i}", 1000 + i) for i in range(7)}
    runs = store.search_all(client, [exp], page_size=3)
    assert {r.info.run_id for r in runs} == ids


def test_an_unknown_sweep_name_lists_the_sweeps_and_suggests_the_closest(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e")
    for name in ("quickstart", "dsprites-rd"):
        _parent(client, exp, name, f"/k/{name}", 1000)
    with pytest.raises(store.SweepNotFound) as err:
        store.find_sweep(client, "quickstrat")
    message = str(err.value)
    assert "did you mean 'quickstart'?" in message and "dsprites-rd" in message and "\n" not in message


# ---------------------------------------------------------------- provenance
def test_provenance_names_this_package_and_its_commit_not_the_working_directory(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    code = ("import json, os; os.chdir(os.environ['OTHER']); from sweeps.store import provenance_tags; "
            "print(json.dumps(provenance_tags()))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**_env(), "OTHER": str(other)})  # fmt: skip
    tags = json.loads(out.stdout)
    assert tags[store.TAG_PACKAGE_VERSION]  # the package's own version
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and (ROOT / "sweeps" / "__init__.py").exists():
        assert tags.get(store.TAG_GIT_COMMIT) == head.stdout.strip()


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- the CLI that reads the store
def test_frontier_and_pick_never_import_ray_or_optuna(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = _parent(client, exp, "hand", "/k/hand", int(time.time() * 1000))
    for i, (rate, distortion) in enumerate([(1.0, 9.0), (3.0, 4.0), (6.0, 2.0)]):
        run = client.create_run(exp, tags={store.TAG_PARENT: parent, store.TAG_TRIAL_ID: f"t{i}",
                                           store.TAG_STATUS: "completed", "bvae.config.beta": str(1.0 + i)})  # fmt: skip
        client.log_metric(run.info.run_id, "rate", rate)
        client.log_metric(run.info.run_id, "distortion", distortion)
        client.set_terminated(run.info.run_id)
    code = ("import sys; from sweeps.cli import main; "
            f"a = main(['frontier', 'hand', '--tracking-uri', {uri!r}]); "
            f"b = main(['pick', 'hand', '--rule', 'knee', '--json', '--tracking-uri', {uri!r}]); "
            "print('EXIT', a, b, sorted(m for m in ('ray', 'optuna') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert "EXIT 0 0 []" in out.stdout, out.stdout + out.stderr


def test_the_repository_cites_no_notes_a_clone_lacks():
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".sh", "") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in ("../" + "shared", "DES" + "IGN §", "DES" + "IGN.md", "STA" + "CK.md"):  # split: not a citation
            if needle in text and not name.startswith("tests/test_structure"):
                offenders.append(f"{name}: {needle}")
    assert not offenders, offenders


@pytest.mark.parametrize("script", sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")))
def test_every_benchmark_imports_against_the_current_package(script, monkeypatch):
    """A benchmark runs rarely (some only on a GPU): a renamed function must fail here, not on the borrowed device."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    importlib.import_module(script)


def test_a_resumed_sweeps_progress_counts_the_trials_that_ended_before_it():
    """A resumed driver's progress starts empty: trials that ended before it were never counted (its last line said
    6/8 done, the summary 8/8), and a member pruned before it ended with `step 0 … rate nan`."""
    import io
    from types import SimpleNamespace

    from sweeps.progress import SweepProgress

    def trial(trial_id, status, result=None):
        return SimpleNamespace(trial_id=trial_id, status=status, config={"objective.beta": 1.0}, last_result=result)

    done = {"step": 100, "rate": 1.0, "distortion": 2.0, DONE_KEY: True}
    pruned = {"step": 50, "rate": 3.0, "distortion": 4.0, DONE_KEY: False}
    ended = [trial("a", "TERMINATED", done), trial("b", "TERMINATED", pruned)]
    running = trial("c", "PENDING")
    out = io.StringIO()
    progress = SweepProgress(3, 100, stream=out)
    progress.on_step_end(0, [*ended, running])
    assert out.getvalue() == ""  # quietly
    assert progress.counts() == (2, 0, 1)
    assert (progress.rows["b"].step, progress.rows["b"].rate, progress.rows["b"].status) == (50, 3.0, "PRUNED")
    progress.on_trial_start(0, [], running)
    progress.on_trial_result(0, [], running, {"step": 50, "rate": 1.5, "distortion": 2.5})
    assert "2/3 done, 1 running, 0 pending" in out.getvalue().splitlines()[-1]
    running.last_result = {**done, "rate": 1.5}
    progress.on_trial_complete(0, [], running)
    assert out.getvalue().splitlines()[-1].endswith("| 3/3 done, 0 running, 0 pending")
    late = trial("d", "TERMINATED", pruned)  # a member whose end this driver reports without a result of its own
    progress.on_trial_complete(0, [], late)
    assert progress.rows["d"].step == 50 and progress.rows["d"].rate == 3.0


def test_the_progress_line_counts_each_trials_own_steps():
    """A searched ``train.steps``: the line said ``step 300/100`` (the base config's steps), and the ETA assumed
    every trial trained for those."""
    import io
    from functools import partial
    from types import SimpleNamespace

    from sweeps.progress import SweepProgress
    from sweeps.runner import _trial_steps
    from sweeps.spec import parse_spec

    spec = parse_spec({"name": "steps", "base": {"dataset": {"name": "blobs", "resolution": 32},
                                                 "model": {"arch": "mlp", "latent_dim": 2},
                                                 "train": {"steps": 100, "eval_every": 50}},
                       "search": {"space": {"train.steps": {"choice": [100, 400]}}}})  # fmt: skip
    out = io.StringIO()
    progress = SweepProgress(3, 100, stream=out, trial_steps=partial(_trial_steps, spec))
    long, short = (SimpleNamespace(trial_id=i, status="RUNNING", config={"train.steps": n}, last_result=None)
                   for i, n in (("long", 400), ("short", 100)))  # fmt: skip
    progress._started -= 30.0  # Ray took 30 s to start: not part of the training pace (the first ETAs ran 2–4× long)
    for trial in (long, short):
        progress.on_trial_start(0, [], trial)
    progress._training_since -= 10.0  # ten seconds of training in
    progress.on_trial_result(0, [], long, {"step": 300, "rate": 1.0, "distortion": 2.0})
    assert " step 300/400 " in out.getvalue().splitlines()[-1]
    progress.on_trial_result(0, [], short, {"step": 100, "rate": 1.0, "distortion": 2.0})
    # 400 steps done of 400 + 100 + one pending trial of (400 + 100) / 2: 100 + 250 left, at 40 steps/s
    assert progress.eta_seconds() == pytest.approx(350 / (400 / 10.0), rel=0.02)


def test_the_eta_counts_what_an_ended_trial_trained_not_its_plan():
    """A member stopped at step 2 of 4,000 counted as 4,000 steps of work done: the ETA ran low by 2–3×."""
    import io
    from types import SimpleNamespace

    from sweeps.progress import SweepProgress

    progress = SweepProgress(2, 4000, stream=io.StringIO())
    stopped, running = (SimpleNamespace(trial_id=i, status="RUNNING", config={}, last_result=None) for i in "ab")
    for trial in (stopped, running):
        progress.on_trial_start(0, [], trial)
    progress._training_since -= 10.0
    stopped.last_result = {"step": 2, "rate": 1.0, "distortion": 2.0, DONE_KEY: False}
    progress.on_trial_complete(0, [], stopped)
    progress.on_trial_result(0, [], running, {"step": 1000, "rate": 1.0, "distortion": 2.0})
    # 1,002 steps trained in 10 s; 3,000 left of the running trial, none of the stopped one
    assert progress.eta_seconds() == pytest.approx(3000 / (1002 / 10.0), rel=0.02)
