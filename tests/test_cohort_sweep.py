"""Fused cohorts in a sweep (``search.cohort``): each member a trial everywhere a user looks — its own Optuna trial,
MLflow child run (exactly once, also across a retry and a resume), checkpoint that loads as a plain model, frontier
row — and the numbers of its configuration trained alone. Real Ray, real Optuna, real MLflow (sqlite)."""

from __future__ import annotations

import math
from pathlib import Path

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


def test_a_scheduler_with_cohorts_is_refused(tmp_path):
    data = _cohort_spec(tmp_path, "asha", scheduler={"metric": "nelbo"})
    with pytest.raises(SpecError, match="search.scheduler: .*search.cohort"):
        parse_spec(data)


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
    points = lambda rs: {r.data.params["objective.beta"]: (r.data.metrics["rate"], r.data.metrics["distortion"])
                         for r in rs}  # fmt: skip
    assert points(runs) == points(clean_runs)  # resumed mid-cohort from its checkpoint: bit for bit on this CPU


@pytest.mark.slow
def test_a_cohort_sweep_killed_then_resumed_has_one_run_per_member(tmp_path):
    data = _cohort_spec(tmp_path, "killed", trials=3)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    killed = _bvae(tmp_path, "sweep", "run", "spec.yaml", faults={"kill_driver_at": "final_frontier"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _bvae(tmp_path, "sweep", "resume", "spec.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3/3 trials completed" in resumed.stdout
    client, parent, runs = _runs(data["tracking"]["uri"], "killed", str(tmp_path / "ray_results" / "killed"))
    assert len(runs) == len({r.data.tags["bvae.trial_id"] for r in runs}) == 3
    assert all(r.info.status == "FINISHED" for r in runs) and client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_members_result_is_read_as_reported_and_as_tune_flattens_it():
    from sweeps.cohorts import member_result

    nested = {"members": {"0": {"rate": 1.0, "kl/0": 0.5}, "1": {"rate": 2.0}}, "training_iteration": 3}
    flat = {"members/0/rate": 1.0, "members/0/kl/0": 0.5, "members/1/rate": 2.0, "training_iteration": 3}
    for result in (nested, flat):
        assert member_result(result, 0) == {"rate": 1.0, "kl/0": 0.5, "training_iteration": 3}
        assert member_result(result, 1) == {"rate": 2.0, "training_iteration": 3}
        assert member_result(result, 2) is None
