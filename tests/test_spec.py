"""Sweep spec validation (every error names its field) and the define-by-run space with real Optuna samplers."""

import copy

import optuna
import pytest

from sweeps.search import make_sampler, trial_state
from sweeps.space import DefineByRun
from sweeps.spec import SpecError, parse_spec

BASE = {
    "dataset": {"name": "blobs", "resolution": 32},
    "model": {"arch": "mlp", "latent_dim": 4, "likelihood": {"kind": "bernoulli"}},
    "train": {"steps": 100, "eval_every": 50},
}
SPEC = {
    "name": "unit",
    "base": BASE,
    "search": {
        "trials": 12,
        "space": {
            "objective.beta": {"log_uniform": [0.1, 10]},
            "model.latent_dim": {"choice": [2, 4, 8]},
            "objective.schedule": {"choice": [
                {"kind": "constant"},
                {"kind": "linear_capacity", "c_max": {"uniform": [1, 10]}, "ramp_steps": 50},
            ]},
        },
    },
}  # fmt: skip


def spec_with(mutate) -> dict:
    data = copy.deepcopy(SPEC)
    mutate(data)
    return data


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["search"]["space"].update({"objective.betta": {"uniform": [1, 2]}}),
     "search.space.objective.betta: objective.betta is not a field of the train config"),
    (lambda d: d["search"]["space"].update({"objective.beta": {"log_uniform": [0, 2]}}),
     "search.space.objective.beta.log_uniform: expected 0 < low"),
    (lambda d: d["search"]["space"].update({"objective.beta": {"uniform": [3, 2]}}),
     "search.space.objective.beta.uniform: expected low < high"),
    (lambda d: d["search"]["space"].update({"objective.beta": {"loguniform": [1, 2]}}),
     "search.space.objective.beta: expected one of"),
    (lambda d: d["search"]["space"].update({"objective.beta": {"uniform": [-1, 2]}}),
     "search.space.objective.beta: objective.beta: input should be greater than 0"),
    (lambda d: d["search"]["space"]["objective.schedule"]["choice"][1].update({"c_max": {"uniform": [-5, 1]}}),
     "objective.schedule.c_max: input should be greater than or equal to 0"),
    (lambda d: d["search"].update({"sampler": "grid"}), "the grid sampler needs a plain choice list"),
    (lambda d: d["search"].update({"sampler": "cmaes"}), "search.sampler: input should be"),
    (lambda d: d["search"].update({"trials": 0}), "search.trials: input should be greater than 0"),
    (lambda d: d.update({"resourcez": {}}), "resourcez: unknown key"),
    (lambda d: d["base"].update({"seedz": 1}), "base.seedz: unknown key"),
    (lambda d: d["base"]["train"].update({"steps": -1}), "base.train.steps: input should be greater than 0"),
    (lambda d: d["search"].update({"space": {}}), "search.space: expected at least one"),
    (lambda d: d["search"].update({"scheduler": {"metric": "mig"}}), "search.scheduler.metric: expected one of"),
    (lambda d: d.update({"name": "a b"}), "name: string should match pattern"),
    (lambda d: d["resources"] if d.update({"resources": {"gpu": 1.5}}) else None, "resources.gpu"),
])  # fmt: skip
def test_spec_errors_name_the_field(mutate, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(mutate))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_trial_config_resolves_nested_choice():
    spec = parse_spec(SPEC)
    params = {"objective.beta": 2.0, "model.latent_dim": 8, "objective.schedule": "linear_capacity",
              "objective.schedule.c_max": 7.5}  # fmt: skip
    config = spec.trial_config(params)
    assert config.objective.beta == 2.0 and config.model.latent_dim == 8
    assert config.objective.schedule.kind == "linear_capacity" and config.objective.schedule.c_max == 7.5
    assert config.objective.schedule.ramp_steps == 50
    assert config.train.threads == 1  # cpu: 1 per trial → one-thread trials
    constant = spec.trial_config({**params, "objective.schedule": "constant"})
    assert constant.objective.schedule.kind == "constant"


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_define_by_run_space_with_real_samplers(sampler):
    spec = parse_spec(spec_with(lambda d: d["search"].update({"sampler": sampler, "seed": 3})))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(spec))
    space = DefineByRun(spec.space)
    seen_nested = 0
    for _ in range(8):
        trial = study.ask()
        space(trial)
        config = spec.trial_config(trial.params)  # every sampled point is a valid train config
        assert 0.1 <= config.objective.beta <= 10
        if trial.params["objective.schedule"] == "linear_capacity":
            assert 1 <= trial.params["objective.schedule.c_max"] <= 10
            seen_nested += 1
        else:
            assert "objective.schedule.c_max" not in trial.params  # conditional: only when chosen
        study.tell(trial, [config.objective.beta, 1 / config.objective.beta])
    assert len(study.trials) == 8


def test_a_slow_proposal_does_not_tell_the_user_to_move_computation_out_of_the_space():
    """A GP sampler's proposal runs inside the space's suggest calls and may take seconds: OptunaSearch's warning that
    the space "took N seconds" and that training belongs in the trainable would send a user looking for a bug."""
    import time
    import warnings

    from ray.tune.search.optuna import OptunaSearch

    from sweeps.search import SweepSearch

    def slow_space(trial):
        trial.suggest_float("objective.beta", 0.1, 10.0, log=True)
        time.sleep(1.05)  # as a GP fit on a few dozen trials

    def warned(search: type[OptunaSearch]) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            search(space=slow_space, metric="rate", mode="min", seed=0).suggest("t1")
        return [str(w.message) for w in seen if "Define-by-run" in str(w.message)]

    assert warned(SweepSearch) == []
    assert warned(OptunaSearch)  # Ray's own warns: the check above bites


def test_same_seed_same_proposals():
    def proposals():
        spec = parse_spec(SPEC)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(spec))
        out = []
        for _ in range(6):
            t = study.ask()
            DefineByRun(spec.space)(t)
            study.tell(t, [t.params["objective.beta"], 1.0])
            out.append(t.params)
        return out

    assert proposals() == proposals()


def test_grid_sampler_over_listed_values():
    data = spec_with(lambda d: d["search"].update({"sampler": "grid", "space": {
        "objective.beta": {"choice": [0.5, 1, 4]}, "model.latent_dim": {"choice": [2, 4]}}}))  # fmt: skip
    spec = parse_spec(data)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(spec))
    seen = set()
    for _ in range(6):
        t = study.ask()
        DefineByRun(spec.space)(t)
        seen.add((t.params["objective.beta"], t.params["model.latent_dim"]))
        study.tell(t, [1.0, 1.0])
    assert len(seen) == 6


def test_trial_state_rules():
    S = optuna.trial.TrialState
    objectives = ["rate", "distortion"]
    assert trial_state({"rate": 1.0, "distortion": 2.0, "done_training": True}, objectives, False) == (S.COMPLETE, [1.0, 2.0])
    assert trial_state({"rate": 1.0, "distortion": 2.0, "done_training": False}, objectives, False)[0] == S.PRUNED
    assert trial_state({"rate": float("nan"), "distortion": 2.0, "done_training": True}, objectives, False)[0] == S.FAIL
    assert trial_state({"rate": 1.0}, objectives, False)[0] == S.FAIL
    assert trial_state({"rate": 1.0, "distortion": 2.0, "done_training": True}, objectives, True)[0] == S.FAIL
    assert trial_state(None, objectives, False)[0] == S.FAIL


def test_relative_data_path_is_made_absolute_for_the_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = spec_with(lambda d: d["base"].update({"dataset": {"name": "file", "path": "data/x.npz"}}))
    spec = parse_spec(data)
    assert spec.raw["base"]["dataset"]["path"] == str(tmp_path / "data" / "x.npz")
    assert spec.base_config.dataset.path == str(tmp_path / "data" / "x.npz")
    assert data["base"]["dataset"]["path"] == "data/x.npz"  # the caller's mapping is left alone
    remote = spec_with(lambda d: d["base"].update({"dataset": {"name": "file", "path": "s3://bucket/x.npz"}}))
    assert parse_spec(remote).base_config.dataset.path == "s3://bucket/x.npz"
    # the files a search space offers too: a trial drawing "b.npz" read it from its own working directory
    def offering(key, choice):
        def edit(d):
            d["base"].update({"dataset": {"name": "file", "path": "data/x.npz"}})
            d["search"]["space"][key] = {"choice": choice}
        return parse_spec(spec_with(edit)).raw["search"]["space"][key]["choice"]

    assert offering("dataset.path", ["b.npz", "s3://bucket/c.npz"]) == [str(tmp_path / "b.npz"), "s3://bucket/c.npz"]
    assert offering("dataset", [{"name": "file", "path": "d.npz"}, {"name": "blobs"}]) == \
           [{"name": "file", "path": str(tmp_path / "d.npz")}, {"name": "blobs"}]  # fmt: skip


@pytest.mark.parametrize("name", ["quickstart", "dsprites_paper_gpu"])
def test_the_shipped_specs_parse_and_fuse_as_they_say(name):
    from pathlib import Path

    from bvae_core.cohort import cohort_key
    from sweeps.spec import load_spec

    spec = load_spec(Path(__file__).parents[1] / "sweeps" / "configs" / f"{name}.yaml")
    assert spec.search.cohort == "auto"
    if spec.resources.gpu:  # the GPU spec's trials can all share one model: one cohort on a GPU that holds them
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        keys = set()
        for _ in range(8):
            trial = study.ask()
            DefineByRun(spec.space)(trial)
            keys.add(cohort_key(spec.trial_config(trial.params)))
        assert len(keys) == 1


def test_a_resume_is_checked_against_the_spec_the_sweep_was_started_with(tmp_path):
    """What is trained or searched may not change on resume; where and how it runs may (sweeps.started_spec)."""
    import yaml

    from bvae_core.config import load_config_file
    from sweeps.atomic_storage import atomic_local_filesystem
    from sweeps.started_spec import check_resume_spec, save_started_spec, spec_differences

    started = parse_spec(copy.deepcopy(SPEC))
    folder = str(tmp_path / "ray_results" / started.name)
    check_resume_spec(started, folder, atomic_local_filesystem())  # nothing kept (an older sweep): unchecked
    save_started_spec(started, folder, atomic_local_filesystem())
    check_resume_spec(started, folder, atomic_local_filesystem())
    moved = copy.deepcopy(SPEC)
    moved.update(resources={"cpu": 2, "gpu": 1}, ray={"address": "auto"}, tracking={"uri": "http://127.0.0.1:5000"},
                 storage={"path": "s3://b/p"})  # fmt: skip
    moved["search"]["max_failures"] = 3
    assert check_resume_spec(parse_spec(moved), folder, atomic_local_filesystem()) == []  # another cluster, …
    recohorted = copy.deepcopy(SPEC)
    recohorted["search"]["cohort"] = 4  # allowed, but the resumed search keeps its own: the user is told
    assert check_resume_spec(parse_spec(recohorted), folder, atomic_local_filesystem()) == [
        f"search.cohort: a resumed search keeps the cohorts it started with "
        f"({SPEC['search'].get('cohort', 'auto')}); 4 applies to a new sweep"]
    other = copy.deepcopy(SPEC)
    other["search"]["trials"] = SPEC["search"]["trials"] + 5
    other["base"]["objective"] = {"beta": 7.5}
    with pytest.raises(SpecError, match=r"^base.objective.beta: this spec is not the one sweep .* \(base.objective."
                                        r"beta: started with \(not set\), given 7.5; search.trials: started with 12, given 17\); resume it .* "
                                        r"e.g. --set search.trials=12$"):
        check_resume_spec(parse_spec(other), folder, atomic_local_filesystem())
    assert [k for k, _, _ in spec_differences({"a": {"b": 1}, "ray": {"x": 1}}, {"a": {"b": 2, "c": [1]}})] == ["a.b", "a.c"]
    auto = copy.deepcopy(SPEC)
    auto["search"]["cohort"] = "auto"  # what the sweep resolved auto to is kept: nothing to say
    assert check_resume_spec(parse_spec(auto), folder, atomic_local_filesystem()) == []
    # a search-space entry is restored whole: `--set search.space.objective.beta.log_uniform=[…]` was refused
    ranged = copy.deepcopy(SPEC)
    ranged["search"]["space"]["objective.beta"] = {"log_uniform": [0.5, 2]}
    with pytest.raises(SpecError) as refused:
        check_resume_spec(parse_spec(ranged), folder, atomic_local_filesystem())
    assert str(refused.value).endswith("e.g. --set 'search.space.objective.beta={log_uniform: [0.1, 10]}'")
    spec_file = tmp_path / "ranged.yaml"
    spec_file.write_text(yaml.safe_dump(ranged))
    restored = load_config_file(spec_file, ["search.space.objective.beta={log_uniform: [0.1, 10]}"])
    assert check_resume_spec(parse_spec(restored), folder, atomic_local_filesystem()) == []


def test_a_started_spec_kept_with_relative_data_paths_in_its_space_still_resumes(tmp_path, monkeypatch):
    """The space's data paths are made absolute now; a sweep started before kept them relative, and its resume read
    as another spec (the --set it suggested was made absolute again: no way to resume)."""
    import yaml

    from sweeps.atomic_storage import atomic_local_filesystem
    from sweeps.started_spec import STARTED_SPEC_FILE, check_resume_spec

    monkeypatch.chdir(tmp_path)
    data = spec_with(lambda d: (d["base"].update({"dataset": {"name": "file", "path": "x.npz"}}),
                                d["search"]["space"].update({"dataset.path": {"choice": ["x.npz", "y.npz"]}})))
    folder = tmp_path / "ray_results" / "unit"
    folder.mkdir(parents=True)
    old = copy.deepcopy(data)
    old["base"]["dataset"]["path"] = str(tmp_path / "x.npz")  # the base's was made absolute then too
    (folder / STARTED_SPEC_FILE).write_text(yaml.safe_dump(old))
    assert check_resume_spec(parse_spec(data), str(folder), atomic_local_filesystem()) == []


def test_scientific_notation_is_a_number_in_a_spec_file_and_in_set(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-4 as a string: a search-space bound was refused while base took it."""
    from sweeps.spec import load_spec

    path = tmp_path / "sci.yaml"
    path.write_text("base: {dataset: {name: blobs}, train: {lr: 5e-4}}\n"
                    "search: {trials: 2, space: {train.lr: {log_uniform: [1e-4, 1E-2]}, objective.beta: {choice: [1e0, 4]}}}\n")
    spec = load_spec(path, ["base.train.steps=2e3"])
    assert (spec.space["train.lr"].low, spec.space["train.lr"].high) == (1e-4, 1e-2)
    assert spec.space["objective.beta"].options == (1.0, 4) and spec.base["train"] == {"lr": 5e-4, "steps": 2000.0}


def test_set_names_one_search_space_entry_whose_key_holds_dots(tmp_path):
    import yaml

    from bvae_core.config import load_config_file

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    data = load_config_file(spec_file, ["search.space.objective.beta={log_uniform: [0.5, 2]}",
                                        "search.space.model.latent_dim={choice: [4, 6]}", "base.train.steps=300"])  # fmt: skip
    space = data["search"]["space"]
    assert space["objective.beta"] == {"log_uniform": [0.5, 2]}  # that entry replaced, not a nested "objective"
    assert space["model.latent_dim"] == {"choice": [4, 6]} and "objective" not in space and "model" not in space
    assert data["base"]["train"]["steps"] == 300  # ordinary nesting as before
    assert parse_spec(data).space["objective.beta"] is not None


def test_a_distribution_set_by_its_kind_on_the_command_line_gets_the_form_that_works(tmp_path):
    import yaml

    from bvae_core.config import load_config_file

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    data = load_config_file(spec_file, ["search.space.objective.beta.uniform=[1, 2]"])
    with pytest.raises(SpecError, match=r"--set 'search.space.objective.beta=\{uniform: \[1, 2\]\}'"):
        parse_spec(data)


@pytest.mark.parametrize(("dataset", "metrics", "noted"), [
    ({"name": "blobs", "resolution": 32, "grid": 8}, ["mig", "dci"], "64 distinct ones: about 100%"),
    ({"name": "blobs", "resolution": 32, "grid": 32}, ["dci"], "1024 distinct ones: about 62%"),  # 1,000 draws
    ({"name": "blobs", "resolution": 32, "grid": 32}, ["mig"], None),  # no held-out metric
    ({"name": "dsprites", "resolution": 32}, ["dci", "sap"], None),  # 737,280 combinations
])
def test_the_sweep_notes_held_out_metrics_tested_on_their_training_points(dataset, metrics, noted):
    from sweeps.preflight import in_sample_note

    data = {**SPEC, "base": {**SPEC["base"], "dataset": dataset}, "eval": {"metrics": metrics}}
    note = in_sample_note(parse_spec(data), None)
    assert note == noted or (noted in note and "in-sample" in note)


@pytest.mark.parametrize(("train", "space", "most"), [
    ({"steps": 100, "eval_every": 50}, {}, 2),
    ({"steps": 100, "eval_every": 50}, {"train.steps": {"int": [100, 400]}}, 8),  # searched longer than base
    ({"steps": 100, "eval_every": 50}, {"train.steps": {"choice": [50, 300]}}, 6),
    ({"steps": 400, "eval_every": 100}, {"train.eval_every": {"choice": [20, 100]}}, 20),
    ({"steps": 100, "eval_every": 50}, {"train.steps": {"choice": [100, 200]}, "train.eval_every": {"int": [10, 50]}}, 20),
    ({"steps": 100, "eval_every": 50}, {"train": {"choice": [{"steps": 100, "eval_every": 50},
                                                             {"steps": 900, "eval_every": 100}]}}, 9),
    ({"steps": 500}, {"train.steps": {"choice": [500, 3000]}}, 3),  # eval_every left out: every 1000 steps
    ({"steps": 5000, "eval_every": 100}, {"train.steps": {"choice": [200, 400]}}, 4),  # no trial takes base's steps
    ({"steps": 100, "eval_every": 50}, {"train": {"choice": [{"steps": {"int": [100, 5000]},
                                                              "eval_every": {"int": [10, 100]}}]}}, 500),  # both nested
])
def test_the_scheduler_counts_the_most_evaluations_any_trial_of_the_space_makes(train, space, most):
    """A trial searched to more steps (or more frequent evaluations) than ``base`` must not be cut at ``base``'s
    last evaluation: Tune's ASHA stops every trial at its ``max_t``."""
    from sweeps.search import build_scheduler
    from sweeps.space import most_evaluations

    data = {**SPEC, "base": {**BASE, "train": train},
            "search": {**SPEC["search"], "space": {**SPEC["search"]["space"], **space},
                       "scheduler": {"grace_period": 1}, "cohort": 1}}  # fmt: skip
    spec = parse_spec(data)
    assert most_evaluations(spec) == most
    assert build_scheduler(spec)._max_t == most


@pytest.mark.parametrize(("grace", "space", "noted"), [
    (2, {}, True),  # 100 steps / 50: two evaluations, the first rung at the last one
    (1, {}, False),
    (2, {"train.steps": {"choice": [100, 400]}}, False),  # the longer trials make 8
])
def test_the_sweep_says_when_its_scheduler_can_stop_nothing(grace, space, noted):
    from sweeps.preflight import scheduler_note

    data = {**SPEC, "search": {**SPEC["search"], "space": {**SPEC["search"]["space"], **space},
                               "scheduler": {"grace_period": grace}}}  # fmt: skip
    note = scheduler_note(parse_spec(data))
    assert (note is not None) == noted
    if noted:
        assert note.startswith(f"search.scheduler: grace_period {grace} ≥ the 2 evaluations")


def test_the_sweep_names_the_factors_a_data_files_metrics_are_scored_against(tmp_path):
    """Every integer Parquet column is a factor: an ``id`` column took MIG from 0.96 to 0.64 on a near-perfect
    encoder, and nothing said which factors were used."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sweeps.preflight import check_data, factors_note

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"image": [[0.5] * 1024] * 40, "id": list(range(40)), "x": [0, 1, 2, 3] * 10,
                             "const": [7] * 40}), path)  # fmt: skip
    data = {**SPEC, "base": {**BASE, "dataset": {"name": "file", "path": str(path)}}, "eval": {"metrics": ["mig"]}}
    spec = parse_spec(data)
    note = factors_note(spec, check_data(spec))
    assert note == (f"eval.metrics: scored against the factors of {path}: id (40 values: one per row, an "
                    f"identifier?), x (4 values), const (1 value: constant, not scored); name the factors with "
                    f"base.dataset.factor_columns")  # fmt: skip
    named = parse_spec({**data, "base": {**data["base"], "dataset": {**data["base"]["dataset"], "factor_columns": ["x"]}}})
    assert factors_note(named, check_data(named)) == f"eval.metrics: scored against the factors of {path}: x (4 values)"


def test_the_latent_size_check_reads_the_sizes_trials_can_take():
    from sweeps.preflight import PreflightError, check_latent_size

    data = {**SPEC, "base": {**BASE, "model": {**BASE["model"], "latent_dim": 1}}, "eval": {"metrics": ["mig"]}}
    check_latent_size(parse_spec(data))  # the space's choice [2, 4, 8] replaces base's 1 in every trial
    data["search"] = {**SPEC["search"], "space": {"objective.beta": {"log_uniform": [0.1, 10]}}}  # base's 1, in every trial
    with pytest.raises(PreflightError, match="model.latent_dim is 1"):
        check_latent_size(parse_spec(data))


def test_the_ranges_nested_in_one_choice_option_are_checked_together():
    """A trial draws every range of its option: steps 100 with eval_every 500 can be drawn, and that trial would
    error. Only each range's low ends together and its high ends together were checked before."""
    space = {"train": {"choice": [{"steps": {"int": [100, 5000]}, "eval_every": {"int": [10, 500]}}]}}
    with pytest.raises(SpecError, match=r"^search\.space\.train: train\.eval_every: expected ≤ train\.steps \(100\), "
                                        r"got 500"):  # fmt: skip
        parse_spec({**SPEC, "search": {**SPEC["search"], "space": space}})


def test_a_ramp_longer_than_the_training_is_a_note():
    """``--set base.train.steps=600`` on the quickstart: its capacity ramp (2,500 steps) never reached c_max, and
    nothing said so."""
    from pathlib import Path

    from sweeps.preflight import schedule_note
    from sweeps.spec import load_spec

    quickstart = Path(__file__).parents[1] / "sweeps" / "configs" / "quickstart.yaml"
    assert schedule_note(load_spec(quickstart)) is None  # 3,000 steps: the ramp ends inside
    note = schedule_note(load_spec(quickstart, ["base.train.steps=600", "base.train.eval_every=300"]))
    assert note == ("objective.schedule.ramp_steps (2500) is longer than train.steps (600): C(t) ends at 24% of c_max "
                    "(0.48 of 2 nats) — in trials the search space draws so")  # fmt: skip
    warmup = {**SPEC, "base": {**SPEC["base"], "objective": {"beta": 4.0, "schedule": {"kind": "warmup",
                                                                                      "warmup_steps": 10**6}}},
              "search": {"trials": 2, "space": {"model.latent_dim": {"choice": [2, 4]}}}}  # fmt: skip
    assert schedule_note(parse_spec(warmup)).startswith("objective.schedule.warmup_steps (1000000) is longer than "
                                                        "train.steps")  # fmt: skip
    assert schedule_note(parse_spec(warmup)).endswith("to objective.beta 4")  # the space draws no schedule


def test_preflight_reads_a_data_file_once_whatever_split_a_trial_draws(tmp_path, monkeypatch):
    """Each corner of split_seed × test_fraction read the whole file again, and kept every copy until the sweep
    started (5 reads of a 3 GB file for 5 split seeds)."""
    import numpy as np

    from bvae_core.data import FileDataset
    from sweeps.preflight import check_data

    np.savez(tmp_path / "x.npz", images=np.zeros((40, 8, 8), np.uint8))
    spec = parse_spec({"name": "once", "base": {**BASE, "dataset": {"name": "file", "path": str(tmp_path / "x.npz")}},
                       "search": {"trials": 4, "space": {"dataset.split_seed": {"int": [1, 5]},
                                                         "dataset.test_fraction": {"uniform": [0.05, 0.2]},
                                                         "model.latent_dim": {"choice": [2, 3]}}}})  # fmt: skip
    reads = []
    read = FileDataset.__init__
    monkeypatch.setattr(FileDataset, "__init__", lambda self, *a, **k: (reads.append(k.get("path")), read(self, *a, **k))[1])
    assert check_data(spec).example_shape == (1, 8, 8)
    assert len(reads) == 1


def test_a_latent_size_too_small_for_a_metric_says_that_metrics_reason():
    """DCI's refusal gave MIG's reason ("it compares the two most informative")."""
    from sweeps.preflight import PreflightError, check_latent_size

    data = {**SPEC, "base": {**BASE, "model": {**BASE["model"], "latent_dim": 1}}, "eval": {"metrics": ["dci"]},
            "search": {"trials": 2, "space": {"objective.beta": {"log_uniform": [0.1, 10]}}}}  # fmt: skip
    with pytest.raises(PreflightError, match=r"^eval\.metrics: dci needs at least 2 latent dimensions \(its "
                                             r"completeness is an entropy over the latent dimensions, which takes 2 "
                                             r"or more\), and model\.latent_dim is 1$"):  # fmt: skip
        check_latent_size(parse_spec(data))


def test_more_threads_than_a_trials_cores_is_a_note():
    from sweeps.preflight import threads_note

    assert threads_note(parse_spec(SPEC)) is None
    data = {**SPEC, "base": {**BASE, "train": {**BASE["train"], "threads": 8}}}
    assert threads_note(parse_spec(data)).startswith("train.threads 8 with resources.cpu 1: each trial runs 8 threads")
    assert threads_note(parse_spec({**data, "resources": {"cpu": 8}})) is None

