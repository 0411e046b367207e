"""A resumed searcher made to agree with the trials Tune saved (:mod:`sweeps.searcher_state`): files of two saves
side by side must not leave a concurrency slot held for good. Real Optuna and Ray Tune's own limiter and generator; the
end-to-end resume is in ``test_faults.py``."""

from __future__ import annotations

import json
import sys

import optuna

from sweeps.searcher_state import SavedTrial, saved_trials
from sweeps.search import build_searcher, make_sampler
from sweeps.spec import parse_spec
from test_sweep import make_spec

SPACE = {"objective.beta": {"log_uniform": [0.2, 5.0]}, "model.latent_dim": {"choice": [2, 4]}}


def _search(tmp_path, cohort: int = 1, trials: int = 4):
    spec = parse_spec(make_spec(tmp_path, "healed", {"trials": trials, "cohort": cohort, "seed": 0, "sampler": "random",
                                                      "concurrency": 1, "space": SPACE}))  # fmt: skip
    return build_searcher(spec, concurrency=1)


def _study(search) -> optuna.Study:
    return search.searcher.searcher.study


def test_a_trial_asked_for_but_never_saved_frees_its_slot_and_its_values_go_to_the_next_trial(tmp_path):
    search = _search(tmp_path)
    asked = search.searcher.suggest("lost")
    search._counter = 1  # as Tune counted it when it created the trial
    assert search.searcher.suggest("next") is None  # the slot is held: at concurrency 1, nothing else would start

    lines = search.settle({})  # the saved trials do not have it
    assert len(lines) == 1 and "lost" in lines[0]
    assert search._counter == 0 and not search.searcher.live_trials
    assert search.searcher.suggest("next") == asked  # the sampler's values, not a new ask
    assert len(_study(search).trials) == 1


def test_a_trial_saved_as_ended_that_the_searcher_missed_is_told_with_its_last_result(tmp_path):
    search = _search(tmp_path)
    search.searcher.suggest("ended")
    result = {"rate": 1.5, "distortion": 2.5, "done_training": True}
    lines = search.settle({"ended": SavedTrial("TERMINATED", result, {})})
    assert len(lines) == 1 and "ended" in lines[0]
    trial = _study(search).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [1.5, 2.5]
    assert search.searcher.suggest("next") is not None  # the slot is free


def test_trials_the_saves_agree_on_are_left_as_they_are(tmp_path):
    search = _search(tmp_path)
    search.searcher.suggest("running")
    search._counter = 1
    for status in ("RUNNING", "PENDING", "ERROR"):  # Tune resumes these: their end reaches the searcher then
        assert search.settle({"running": SavedTrial(status, {}, {})}) == []
    assert search.searcher.live_trials == {"running"} and search._counter == 1
    assert _study(search).trials[0].state == optuna.trial.TrialState.RUNNING


def test_a_saved_trial_the_searcher_never_asked_for_is_given_to_optuna_with_its_values(tmp_path):
    search = _search(tmp_path)
    values = {"objective.beta": 1.25, "model.latent_dim": 4}
    ended_result = {"rate": 1.0, "distortion": 3.0, "done_training": True}
    lines = search.settle({"late": SavedTrial("RUNNING", {}, values),
                           "late_ended": SavedTrial("TERMINATED", ended_result, {**values, "objective.beta": 2.0})})
    assert len(lines) == 2 and search._counter == 2  # Tune counts the saved trials: no extra trial is created
    running, ended = _study(search).trials
    assert running.params == values and running.state == optuna.trial.TrialState.RUNNING
    assert ended.params["objective.beta"] == 2.0 and ended.values == [1.0, 3.0]
    assert search.searcher.live_trials == {"late"}
    search.searcher.on_trial_complete("late", result={"rate": 0.5, "distortion": 4.0, "done_training": True})
    assert _study(search).trials[0].values == [0.5, 4.0]  # its end reached Optuna


def test_a_lost_cohort_trials_members_train_in_the_next_cohort_trial(tmp_path):
    search = _search(tmp_path, cohort=2, trials=4)
    members = [m["number"] for m in search.searcher.suggest("lost")["members"]]
    search.settle({})
    again = [m["number"] for m in search.searcher.suggest("next")["members"]]
    assert again == members
    asked = {t.number for t in _study(search).trials}
    assert len(asked) <= 4  # the budget is not spent twice


def test_a_released_cohort_trains_though_the_searcher_had_ended(tmp_path):
    search = _search(tmp_path, cohort=2, trials=4)
    search.searcher.set_max_concurrency(2)
    first = search.searcher.suggest("first")["members"]
    lost = [m["number"] for m in search.searcher.suggest("lost")["members"]]
    search.searcher.on_trial_complete("first", {"members": {str(j): {"rate": 1.0, "distortion": 2.0}
                                                            for j in range(len(first))}})  # fmt: skip
    assert search.searcher.suggest("third") == "FINISHED"
    search._finished, search._total_samples = True, sys.maxsize  # as Tune's generator has them (num_samples -1)
    search.settle({"first": SavedTrial("TERMINATED", {}, {})})
    assert not search.is_finished()
    assert [m["number"] for m in search.searcher.suggest("next")["members"]] == lost


def test_a_trial_only_the_searcher_asked_for_is_released_too(tmp_path):
    """Three files, three saves: the searcher asked for a trial that neither the limiter nor Tune saved."""
    search = _search(tmp_path)
    asked = search.searcher.suggest("lost")
    search.searcher.live_trials.clear()  # the limiter's state is of the save before the ask
    search.searcher.num_unfinished_live_trials = 0
    lines = search.settle({})
    assert len(lines) == 1 and "lost" in lines[0]
    assert search.searcher.suggest("next") == asked and len(_study(search).trials) == 1  # not left RUNNING aside


def _state(folder, name: str, trials: dict[str, float]) -> None:
    data = [[json.dumps({"trial_id": tid, "status": "RUNNING", "evaluated_params": {"objective.beta": beta}}),
             json.dumps({"last_result": {}})] for tid, beta in trials.items()]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"experiment_state-{name}.json").write_text(json.dumps({"trial_data": data}))


def test_the_trials_are_read_where_tune_restores_them_from_in_the_order_it_made_them(tmp_path):
    storage, staging = tmp_path / "storage", tmp_path / "staging"
    _state(storage, "2026-01-01_00-00-00", {"b": 1.0})
    _state(storage, "2026-01-02_00-00-00", {"z": 2.0, "a": 3.0})  # the newest: what Tune restores
    _state(staging, "2026-01-02_00-00-00", {"z": 2.0, "a": 3.0})
    _state(staging, "2026-01-03_00-00-00", {"z": 2.0, "a": 3.0, "stale": 4.0})  # staged, never stored
    trials = saved_trials(str(storage))
    assert list(trials) == ["z", "a"] and trials["a"].params == {"objective.beta": 3.0}
    search = _search(tmp_path)
    assert list(search.saved_trials(str(staging))) == ["z", "a", "stale"]  # without the driver's word: the copy
    search.restored_from = (str(storage), None)
    assert list(search.saved_trials(str(staging))) == ["z", "a"]
    (storage / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [')
    assert saved_trials(str(storage)) is None  # unreadable: restored as saved, with a warning


def test_an_errored_trial_a_resume_trains_again_is_told_to_optuna_when_it_ends(tmp_path):
    """An errored trial is told FAIL, and ``bvae sweep resume`` trains it again (``resume_errored``): its end must
    reach Optuna (FAIL is final there, so as a new trial with the same values) and count against the concurrency."""
    search = _search(tmp_path)
    search.searcher.suggest("t")
    search.on_trial_complete("t", error=True)
    failed = _study(search).trials[0]
    assert failed.state == optuna.trial.TrialState.FAIL
    lines = search.settle({"t": SavedTrial("ERROR", {}, {})})
    assert len(lines) == 1 and "trial t had errored and trains again" in lines[0]
    assert search.searcher.live_trials == {"t"}
    assert search.settle({"t": SavedTrial("ERROR", {}, {})}) == []  # once
    search.on_trial_complete("t", result={"rate": 1.5, "distortion": 2.5, "done_training": True})
    first, again = _study(search).trials
    assert first.state == optuna.trial.TrialState.FAIL and again.state == optuna.trial.TrialState.COMPLETE
    assert again.params == failed.params and again.values == [1.5, 2.5]
    assert not search.searcher.live_trials


def test_an_errored_cohorts_members_are_told_again_but_not_one_that_had_ended_before_the_error(tmp_path):
    search = _search(tmp_path, cohort=2, trials=8)
    members = search.searcher.suggest("t")["members"]
    assert len(members) == 2
    state = lambda number: _study(search).trials[number].state.name  # noqa: E731
    search.on_trial_result("t", {"members/0/rate": 9.0, "members/0/distortion": 9.0, "members/0/step": 100,
                                 "members/0/stopped_early": True})  # member 0 pruned, told then  # fmt: skip
    search.on_trial_complete("t", error=True)  # member 1 told FAIL by the error
    assert [state(m["number"]) for m in members] == ["PRUNED", "FAIL"]
    asked = len(_study(search).trials)
    lines = search.settle({"t": SavedTrial("ERROR", {}, {})})
    assert len(lines) == 1 and search.searcher.live_trials == {"t"}
    assert len(_study(search).trials) == asked + 1  # member 1 only
    done = {f"members/{j}/{k}": v for j in (0, 1) for k, v in (("rate", 1.0), ("distortion", 2.0), ("step", 300),
                                                                ("done_training", True))}  # fmt: skip
    search.on_trial_complete("t", result={**done, "members/0/repeat": True})
    again = _study(search).trials[-1]
    assert [state(m["number"]) for m in members] == ["PRUNED", "FAIL"] and again.state.name == "COMPLETE"
    assert again.params == _study(search).trials[members[1]["number"]].params and again.values == [1.0, 2.0]
    given = []
    for i in range(8):  # the rest of the budget of 8: six more members, the re-told one not counted
        config = search.searcher.suggest(f"u{i}")
        if not isinstance(config, dict):
            break
        given += [m["number"] for m in config["members"]]
        search.on_trial_complete(f"u{i}", error=True)
    assert len(given) == 6


def test_a_searcher_saved_by_the_previous_version_resumes(tmp_path):
    """A searcher pickled before this version: a cohort searcher held ``_eval_every`` as an int (a resume crashed on
    the first member result), and neither kept which trials had errored (those a resume trains again)."""
    import pickle

    plain = _search(tmp_path)
    plain.searcher.suggest("t")
    plain.on_trial_complete("t", error=True)
    plain.searcher.searcher.save(str(tmp_path / "plain.pkl"))
    state = pickle.loads((tmp_path / "plain.pkl").read_bytes())
    del state["_errored"]  # as the previous version saved it
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(state))
    plain.searcher.searcher.restore(str(tmp_path / "plain.pkl"))
    assert plain.settle({"t": SavedTrial("RUNNING", {}, {})}) == []  # not saved as errored: not read as one
    assert len(plain.settle({"t": SavedTrial("ERROR", {}, {})})) == 1
    plain.on_trial_complete("t", result={"rate": 1.0, "distortion": 2.0, "done_training": True})
    assert [t.state.name for t in _study(plain).trials] == ["FAIL", "COMPLETE"]

    data = make_spec(tmp_path, "old", {"trials": 2, "cohort": 2, "seed": 0, "sampler": "random", "concurrency": 1,
                                       "space": SPACE, "scheduler": {"metric": "nelbo", "grace_period": 1}})  # fmt: skip
    spec = parse_spec(data)
    from sweeps.cohorts import CohortSearch

    old = CohortSearch(spec, make_sampler(spec), trials=2)
    old._params[0] = {"objective.beta": 1.0, "model.latent_dim": 2}
    old._cohorts["t"] = [0]
    state = {k: v for k, v in old.__getstate__().items() if k not in ("_member_intervals", "_errored")}
    state["_eval_every"] = 100  # what the previous version saved
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(state))
    restored = CohortSearch.__new__(CohortSearch)
    restored.__dict__.update(pickle.loads((tmp_path / "old.pkl").read_bytes()))
    restored._scheduler = spec.search.scheduler
    restored.on_trial_result("t", {"members/0/nelbo": 3.0, "members/0/step": 100})
    assert list(restored._records) == [("t-0", 1)]


def test_an_interrupted_cohort_whose_member_had_diverged_is_not_asked_again(tmp_path):
    """A member told FAIL for its non-finite loss, in a cohort interrupted while the others trained: the resume
    said "had errored" and gave Optuna a second FAIL for it (no trial had errored)."""
    search = _search(tmp_path, cohort=2, trials=2)
    members = search.searcher.suggest("t")["members"]
    search.on_trial_result("t", {"members/0/rate": float("nan"), "members/0/distortion": float("nan"),
                                 "members/0/step": 2, "members/0/error": "non-finite loss at step 2"})  # fmt: skip
    asked = len(_study(search).trials)
    search.searcher.searcher.save(str(tmp_path / "s.pkl"))
    restored = _search(tmp_path, cohort=2, trials=2)
    restored.searcher.searcher.restore(str(tmp_path / "s.pkl"))
    restored.searcher.live_trials.add("t")
    assert restored.settle({"t": SavedTrial("RUNNING", {}, {})}) == []
    assert len(_study(restored).trials) == asked and _study(restored).trials[members[0]["number"]].state.name == "FAIL"
