"""Fused cohorts in a sweep (``search.cohort``): each member a trial everywhere a user looks — its own Optuna trial,
MLflow child run (exactly once, also across a retry and a resume), checkpoint that loads as a plain model, frontier
row — and the numbers of its configuration trained alone. Real Ray, real Optuna, real MLflow (sqlite)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient

from bvae_core import Trainer
from bvae_core.cohort import cohort_key
from bvae_core.trainer import load_model
from sweeps.cli import main
from sweeps.cohorts import CohortSearch
from sweeps.runner import run_sweep
from sweeps.search import make_sampler
from sweeps.spec import SpecError, parse_spec
from test_faults import _bvae, _runs
from test_sweep import GAUSSIAN_BASE, make_spec, runs_of

SPACE = {"objective.beta": {"log_uniform": [0.2, 5.0]}, "model.latent_dim": {"choice": [2, 4]}}


def _cohort_spec(tmp_path: Path, name: str, trials: int = 5, cohort: int = 2, **search) -> dict:
    data = make_spec(tmp_path, name, {"trials": trials, "cohort": cohort, "seed": 0, "sampler": "random",
                                      "concurrency": 1, "space": SPACE, **search})  # fmt: skip
    data["ray"] = {"num_cpus": 2}
    return data


def test_the_searcher_asks_the_budget_once_and_never_mixes_configurations_that_cannot_share(tmp_path):
    spec = parse_spec(_cohort_spec(tmp_path, "groups", trials=9, cohort=3))
    search = CohortSearch(spec, make_sampler(spec), trials=9)
    cohorts = []
    while (suggested := search.suggest(f"t{len(cohorts)}")) != CohortSearch.FINISHED:
        cohorts.append(suggested["members"])
    numbers = [m["number"] for c in cohorts for m in c]
    assert sorted(numbers) == list(range(9))  # every asked trial trains, once
    for members in cohorts:
        assert 1 <= len(members) <= 3
        assert len({cohort_key(spec.trial_config(m["params"])) for m in members}) == 1  # one latent size per cohort
    # told one by one, from each member's own result
    for t, members in enumerate(cohorts):
        result = {"members": {str(j): {"rate": 1.0 + j, "distortion": 2.0, "done_training": j == 0}
                              for j in range(len(members))}}  # fmt: skip
        search.on_trial_complete(f"t{t}", result)
    states = {t.number: t.state for t in search.study.trials}
    firsts = {c[0]["number"] for c in cohorts}
    assert all(states[n] == optuna.trial.TrialState.COMPLETE for n in firsts)
    assert all(states[n] == optuna.trial.TrialState.PRUNED for n in set(numbers) - firsts)  # not trained to the end


def _asha_stops(order: list[tuple[str, int, float]], grace: int, rf: float, max_t: int) -> dict[str, int]:
    """Asynchronous successive halving (Li et al. 2020), written from the paper for this test: rungs at
    grace·rf^k evaluations below max_t; a member arriving at a rung worse (higher) than the (1 − 1/rf) quantile of
    the values recorded there before it is stopped. Returns member → the evaluation it stopped at."""
    import numpy as np

    rungs: dict[int, list[float]] = {}
    milestones = {grace * rf**k for k in range(64) if grace * rf**k < max_t}
    stopped: dict[str, int] = {}
    for member, evaluation, value in order:
        if member in stopped or evaluation not in milestones:
            continue
        before = rungs.setdefault(evaluation, [])
        if before and -value < np.percentile([-v for v in before], (1 - 1 / rf) * 100):
            stopped[member] = evaluation
        before.append(value)
    return stopped


def test_member_rungs_cut_as_the_paper_says():
    from sweeps.member_scheduler import MemberRungs

    rng = np.random.default_rng(3)
    order = [(f"m{i}", e, float(rng.normal(e, 1.0))) for i in range(12) for e in (1, 2, 3, 4, 5, 6, 7, 8)]
    rungs = MemberRungs("nelbo", "min", grace_period=1, reduction_factor=2, max_evaluations=8)
    stopped: dict[str, int] = {}
    for member, evaluation, value in order:
        if member not in stopped and rungs.decide(member, evaluation, value):
            stopped[member] = evaluation
    assert stopped == _asha_stops(order, 1, 2, 8) and stopped  # some stop, and exactly those
    for member, evaluation in stopped.items():  # an evaluation run again (a retried trial) gets the same answer
        assert rungs.decide(member, evaluation, -1e9)
    assert not rungs.decide("late", 8, 1e9)  # the last evaluation is never judged: the member is done
    assert not rungs.decide("nan", 1, float("nan"))  # a non-finite metric is for FAIL, not for the scheduler


def test_a_searchers_member_records_seed_a_new_rungs_actor_on_resume(local_ray, tmp_path):
    import ray

    data = _cohort_spec(tmp_path, "rungs", trials=4, scheduler={"metric": "nelbo", "grace_period": 1})
    spec = parse_spec(data)
    search = CohortSearch(spec, make_sampler(spec), trials=4)
    config = search.suggest("t0")
    name = config["rungs_actor"]
    for step, values in ((100, (3.0, 5.0)), (200, (2.0, 4.0))):  # member 1 is worse; a repeat is not recorded
        search.on_trial_result("t0", {f"members/{j}/{key}": value for j, v in enumerate(values)
                                      for key, value in (("nelbo", v), ("step", step))}  # fmt: skip
                               | ({"members/1/stopped_early": True} if step == 200 else {}))
    search.on_trial_result("t0", {"members/1/nelbo": 0.1, "members/1/step": 200, "members/1/repeat": True})
    assert ray.get(ray.get_actor(name).cutoffs.remote()) == {1: None, 2: None}  # only trials record in the actor
    search.save(str(tmp_path / "searcher.pkl"))
    ray.kill(ray.get_actor(name))  # the first driver is gone, and its actor with it
    restored = CohortSearch(spec, make_sampler(spec), trials=4)
    restored.restore(str(tmp_path / "searcher.pkl"))
    cutoffs = ray.get(ray.get_actor(name).cutoffs.remote())
    assert cutoffs == {1: pytest.approx(4.0), 2: pytest.approx(3.0)}  # medians of {3, 5} and {2, 4}: no repeat
    member = "t0-1"
    assert ray.get(ray.get_actor(name).decide.remote(member, 2, 0.0))  # stopped there before: stopped again
    assert not ray.get(ray.get_actor(name).decide.remote(member, 1, 99.0))  # continued there: continues again
    ray.kill(ray.get_actor(name))


def test_a_members_evaluations_count_its_own_searched_interval(local_ray, tmp_path):
    """``train.eval_every`` searched: the driver kept a member's result at step 100 as its first evaluation (the
    base config's interval) while the trial had asked the rungs about its second, so a resume replayed the
    decisions against the wrong rungs; and the rungs ended at the base config's last evaluation."""
    import ray

    space = {**SPACE, "train.eval_every": {"choice": [50]}, "train.steps": {"choice": [600]}}
    data = _cohort_spec(tmp_path, "interval", trials=2, space=space, scheduler={"metric": "nelbo", "grace_period": 1})
    spec = parse_spec(data)
    search = CohortSearch(spec, make_sampler(spec), trials=2)
    assert search._max_evaluations == 12  # 600 steps every 50, not the base's 300 every 100
    search.suggest("t0")
    search.on_trial_result("t0", {"members/0/nelbo": 3.0, "members/0/step": 100})
    assert list(search._records) == [("t0-0", 2)]
    ray.kill(ray.get_actor(search._rungs_name))


def test_a_scheduler_stops_members_of_a_cohort_one_by_one(local_ray, tmp_path):
    base = {**GAUSSIAN_BASE, "model": {**GAUSSIAN_BASE["model"], "latent_dim": 2},
            "train": {**GAUSSIAN_BASE["train"], "steps": 400}}  # fmt: skip
    data = make_spec(tmp_path, "asha", {
        "trials": 4, "cohort": 2, "sampler": "grid", "concurrency": 1, "seed": 0,
        "space": {"objective.beta": {"choice": [0.5, 30.0, 0.6, 40.0]}},
        "scheduler": {"metric": "nelbo", "mode": "min", "grace_period": 1, "reduction_factor": 2},
    }, base)  # fmt: skip
    data["ray"] = {"num_cpus": 2}
    outcome = run_sweep(parse_spec(data))
    client, parent, children = runs_of(data, outcome)
    assert len(children) == len({r.data.tags["bvae.trial_id"] for r in children}) == 4  # one run per member
    history = {r.data.tags["bvae.trial_id"]: [(int(m.step), m.value) for m in client.get_metric_history(r.info.run_id, "nelbo")]
               for r in children}  # fmt: skip
    # With one cohort at a time, members are judged in (trial, evaluation, member) order: replay that order.
    started = {r.data.tags["bvae.trial_id"].rsplit("-", 1)[0]: r.info.start_time for r in children}
    order = [(member, step // 100, value)
             for trial in sorted(started, key=started.get)
             for evaluation in range(1, 5)
             for member in sorted(m for m in history if m.rsplit("-", 1)[0] == trial)
             for step, value in history[member] if step == evaluation * 100]  # fmt: skip
    expected = _asha_stops(order, 1, 2, 4)
    assert expected, order  # the case is not vacuous: some member is stopped
    status = {r.data.tags["bvae.trial_id"]: r for r in children}
    assert {m for m, r in status.items() if r.data.tags["bvae.status"] == "pruned"} == set(expected)
    for member, run in status.items():
        steps = [s for s, _ in history[member]]
        if member in expected:  # stopped at its rung: nothing logged after, nothing logged twice, KILLED
            assert steps == [100 * e for e in range(1, expected[member] + 1)] and run.info.status == "KILLED"
            trial, j = member.rsplit("-", 1)
            saved = sorted((tmp_path / "ray_results" / "asha" / trial).glob(f"checkpoint_*/member_{j}/checkpoint.pt"))
            assert torch.load(saved[-1], weights_only=False)["step"] == steps[-1]  # it stopped updating there
        else:
            assert steps == [100, 200, 300, 400] and run.info.status == "FINISHED"
    states = sorted(t.state.name for t in outcome.study.trials)
    assert states.count("PRUNED") == len(expected) and states.count("COMPLETE") == 4 - len(expected)
    # a stopped member ends when it stops — its run and its Optuna trial — not when the rest of its cohort ends
    for member in expected:
        mates = [r for m, r in status.items() if m.rsplit("-", 1)[0] == member.rsplit("-", 1)[0] and m not in expected]
        for mate in mates:
            assert status[member].info.end_time < mate.info.end_time
    told = {float(t.params["objective.beta"]): t.datetime_complete for t in outcome.study.trials}
    beta = lambda member: float(status[member].data.params["objective.beta"])
    for member in expected:
        for mate in (m for m in status if m.rsplit("-", 1)[0] == member.rsplit("-", 1)[0] and m not in expected):
            assert told[beta(member)] < told[beta(mate)]


def test_a_cohort_sweep_gives_each_member_its_trial_run_checkpoint_and_frontier_row(local_ray, tmp_path, capsys):
    data = _cohort_spec(tmp_path, "fused")
    outcome = run_sweep(parse_spec(data))
    assert len(outcome.rows) == 5 and {r.status for r in outcome.rows} == {"COMPLETED"}
    assert any(r.trial_id.endswith("-1") for r in outcome.rows)  # at least one Ray trial trained two members
    states = [t.state for t in outcome.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 5  # one Optuna trial per member

    client, parent, children = runs_of(data, outcome)
    assert len(children) == len({r.data.tags["bvae.trial_id"] for r in children}) == 5
    by_beta = {}
    for run in children:
        assert run.info.status == "FINISHED"
        latent = int(run.data.params["model.latent_dim"])
        assert {f"kl/{i}" for i in range(latent)} == {k for k in run.data.metrics if k.startswith("kl/")}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "rate")] == [100, 200, 300]
        by_beta[float(run.data.params["objective.beta"])] = run
    # a member trains to its configuration's numbers alone (a vmap cohort: to float rounding)
    beta, run = sorted(by_beta.items())[0]
    params = {"objective.beta": beta, "model.latent_dim": int(run.data.params["model.latent_dim"])}
    trainer = Trainer(parse_spec(data).trial_config(params))
    trainer.fit()
    alone = trainer.evaluate()
    for key in ("rate", "distortion"):
        assert run.data.metrics[key] == pytest.approx(alone[key], rel=1e-3, abs=1e-4), key
    # its checkpoint is a plain model's
    folder = client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "dl"))
    model, config = load_model(Path(folder) / "checkpoint.pt")
    assert config.objective.beta == pytest.approx(beta) and model.latent_dim == params["model.latent_dim"]
    assert torch.isfinite(model.decode(torch.zeros(1, model.latent_dim))).all()

    # the frontier has a row per member, and one can be picked and registered
    capsys.readouterr()
    assert main(["frontier", "fused", "--json", "--tracking-uri", outcome.tracking_uri]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert len(rows) == 5 and all(math.isfinite(r["rate"]) for r in rows)
    assert main(["pick", "fused", "--rule", "knee", "--register", "fused-pick", "--tracking-uri",
                 outcome.tracking_uri]) == 0  # fmt: skip


@pytest.mark.slow
def test_a_cohort_raising_mid_training_resumes_mid_cohort_to_a_clean_runs_numbers(tmp_path):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    for folder in (clean, faulty):
        folder.mkdir()
        data = _cohort_spec(folder, "retry", trials=4)
        data["base"] = {**GAUSSIAN_BASE, "model": {**GAUSSIAN_BASE["model"], "latent_dim": 2}}
        data["search"]["space"] = {"objective.beta": {"log_uniform": [0.2, 5.0]}}  # one cohort key: pairs
        (folder / "spec.yaml").write_text(yaml.safe_dump(data))
    assert _bvae(clean, "sweep", "run", "spec.yaml").returncode == 0
    done = _bvae(faulty, "sweep", "run", "spec.yaml", faults={"raise_at_step": 150, "fraction": 1.0, "seed": 0})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4/4 trials completed" in done.stdout
    _, _, clean_runs = _runs(f"sqlite:///{clean}/mlflow.db", "retry", str(clean / "ray_results" / "retry"))
    client, parent, runs = _runs(f"sqlite:///{faulty}/mlflow.db", "retry", str(faulty / "ray_results" / "retry"))
    assert len(runs) == len({r.data.tags["bvae.trial_id"] for r in runs}) == 4  # one run per member
    assert all(r.info.status == "FINISHED" for r in runs) and parent.info.status == "FINISHED"
    assert all(int(r.data.tags.get("bvae.retries", "0")) >= 1 for r in runs)  # every cohort was retried
    cohorts = {r.data.tags["bvae.trial_id"].rsplit("-", 1)[0] for r in runs}
    for cohort in cohorts:  # one line per cohort's retry, not one per member (nor Ray's traceback)
        assert done.stderr.count(f"trial {cohort} (cohort) errored; retried from its last checkpoint (retry 1): ") == 1
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    points = lambda rs: {r.data.params["objective.beta"]: (r.data.metrics["rate"], r.data.metrics["distortion"])
                         for r in rs}  # fmt: skip
    assert points(runs) == points(clean_runs)  # resumed mid-cohort from its checkpoint: bit for bit on this CPU


@pytest.mark.slow
@pytest.mark.parametrize("moment, resume_with", [
    ("final_frontier", []),
    ("first_report", ["--set", "search.cohort=1"]),  # a resume that sets cohort 1 still meets cohort trials
])  # fmt: skip
def test_a_cohort_sweep_killed_then_resumed_has_one_run_per_member(tmp_path, moment, resume_with):
    data = _cohort_spec(tmp_path, "killed", trials=3)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    killed = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"kill_driver_at": moment})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml", *resume_with)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3/3 trials completed" in resumed.stdout
    client, parent, runs = _runs(data["tracking"]["uri"], "killed", str(tmp_path / "ray_results" / "killed"))
    assert len(runs) == len({r.data.tags["bvae.trial_id"] for r in runs}) == 3
    assert all(r.info.status == "FINISHED" for r in runs) and client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_member_whose_loss_goes_non_finite_fails_then_while_its_cohort_trains_on(local_ray, tmp_path):
    base = {**GAUSSIAN_BASE, "model": {**GAUSSIAN_BASE["model"], "latent_dim": 2}}
    data = make_spec(tmp_path, "diverged", {"trials": 2, "cohort": 2, "sampler": "grid", "concurrency": 1, "seed": 0,
                                            "space": {"train.lr": {"choice": [3.0e-3, 1.0e30]}}}, base)  # fmt: skip
    data["ray"] = {"num_cpus": 2}
    outcome = run_sweep(parse_spec(data))
    client, parent, children = runs_of(data, outcome)
    by_lr = {float(r.data.params["train.lr"]): r for r in children}
    diverged, healthy = by_lr[1.0e30], by_lr[3.0e-3]
    assert diverged.info.status == "FAILED" and "non-finite" in diverged.data.tags["bvae.reason"]
    assert healthy.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(healthy.info.run_id, "rate")] == [100, 200, 300]
    assert diverged.info.end_time < healthy.info.end_time  # ended when it failed, not with its cohort
    states = {float(t.params["train.lr"]): t.state.name for t in outcome.study.trials}
    assert states == {1.0e30: "FAIL", 3.0e-3: "COMPLETE"}
    assert {r.status for r in outcome.rows} == {"FAILED", "COMPLETED"}


def test_a_members_result_is_read_as_reported_and_as_tune_flattens_it():
    from sweeps.cohorts import member_result

    nested = {"members": {"0": {"rate": 1.0, "kl/0": 0.5}, "1": {"rate": 2.0}}, "training_iteration": 3}
    flat = {"members/0/rate": 1.0, "members/0/kl/0": 0.5, "members/1/rate": 2.0, "training_iteration": 3}
    for result in (nested, flat):
        assert member_result(result, 0) == {"rate": 1.0, "kl/0": 0.5, "training_iteration": 3}
        assert member_result(result, 1) == {"rate": 2.0, "training_iteration": 3}
        assert member_result(result, 2) is None


class _Recorder:
    """An inner callback that records which hook reached which member."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, hook):
        return lambda iteration, trials, trial, **info: self.calls.append((hook, trial.trial_id))


def _cohort_trial(last_result=None):
    from types import SimpleNamespace

    config = {"members": [{"number": 0, "params": {}}, {"number": 1, "params": {}}]}
    return SimpleNamespace(trial_id="t", config=config, last_result=last_result, checkpoint=None, error_file=None,
                           status="RUNNING")  # fmt: skip


def test_a_member_that_ended_early_is_ended_once_whatever_its_cohort_does_after():
    from sweeps.cohorts import MemberFanOut

    inner = _Recorder()
    fan, trial = MemberFanOut(inner), _cohort_trial()
    fresh = lambda step, **extra: {"rate": 1.0, "distortion": 2.0, "step": step, **extra}
    fan.on_trial_result(0, [trial], trial, result={"members": {"0": fresh(100, stopped_early=True), "1": fresh(100)}})
    assert inner.calls == [("on_trial_result", "t-0"), ("on_trial_complete", "t-0"), ("on_trial_result", "t-1")]
    inner.calls.clear()
    # the cohort is retried from an older checkpoint: member 0 trains to its stop again — not news to anyone
    fan.on_trial_recover(0, [trial], trial)
    fan.on_trial_result(0, [trial], trial, result={"members": {"0": fresh(100, stopped_early=True), "1": fresh(100)}})
    fan.on_trial_result(0, [trial], trial, result={"members": {"0": fresh(100, repeat=True), "1": fresh(200)}})
    fan.on_trial_complete(0, [trial], trial)
    assert ("on_trial_complete", "t-0") not in inner.calls and ("on_trial_result", "t-0") not in inner.calls
    assert inner.calls[-1] == ("on_trial_complete", "t-1")


def test_after_a_resume_a_member_ended_before_is_ended_never_errored():
    from sweeps.cohorts import MemberFanOut

    inner = _Recorder()
    restored = _cohort_trial({"members": {"0": {"rate": 1.0, "distortion": 2.0, "step": 100, "repeat": True},
                                          "1": {"rate": 1.0, "distortion": 2.0, "step": 200}}})  # fmt: skip
    fan = MemberFanOut(inner)  # a resumed driver's: it saw nothing of the first driver's
    fan.on_trial_start(0, [restored], restored)
    assert inner.calls == [("on_trial_start", "t-1")]  # the ended member does not start again
    fan.on_trial_error(0, [restored], restored)  # the whole cohort then fails
    assert inner.calls[1:] == [("on_trial_complete", "t-0"), ("on_trial_error", "t-1")]


def test_the_summary_of_an_errored_cohort_keeps_a_member_that_had_ended_before_the_error(tmp_path):
    """The progress lines (and MLflow, Optuna) said PRUNED for a member stopped before its cohort errored; the
    summary table said ERROR."""
    from types import SimpleNamespace

    from sweeps.runner import _rows_from_results

    spec = parse_spec(_cohort_spec(tmp_path, "rows"))
    config = {"members": [{"number": n, "params": {"objective.beta": b, "model.latent_dim": 2}}
                          for n, b in ((0, 1.0), (1, 2.0))]}  # fmt: skip
    metrics = {"trial_id": "t", "members": {
        "0": {"rate": 1.0, "distortion": 2.0, "step": 100.0, "done_training": False, "stopped_early": True, "repeat": True},
        "1": {"rate": 1.5, "distortion": 2.5, "step": 200.0, "done_training": False}}}  # fmt: skip
    result = SimpleNamespace(metrics=metrics, config=config, path="/x/t", error=RuntimeError("worker died"))
    assert {r.trial_id: r.status for r in _rows_from_results([result], spec)} == {"t-0": "PRUNED", "t-1": "ERROR"}
