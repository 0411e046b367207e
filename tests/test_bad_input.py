"""Malformed input, tried as users get it wrong: each case exits 2 with one line on stderr that names the field or the
resource and what was expected, starts nothing (no Ray, no storage folder, no tracking store) and leaves no parent
run behind."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweeps.cli import main

from servers import free_port, start_moto

BASE = {
    "dataset": {"name": "blobs", "resolution": 32},
    "model": {"arch": "mlp", "latent_dim": 4},
    "objective": {"beta": 1.0},
    "train": {"steps": 20, "eval_every": 10, "batch_size": 16},
}
GOOD = {"name": "bad", "base": BASE, "search": {"trials": 2, "space": {"objective.beta": {"log_uniform": [0.5, 4.0]}}}}


def _with(path: str, value) -> dict:
    """GOOD with ``path`` (dotted) set to ``value``; ``value=...`` deletes it."""
    data = copy.deepcopy(GOOD)
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return data


def _npz(tmp: Path, name: str, **arrays) -> str:
    path = tmp / name
    np.savez(path, **arrays)
    return str(path)


def _parquet(tmp: Path, name: str, **columns) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp / name
    pq.write_table(pa.table(columns), path)
    return str(path)


def _truncated(path: str) -> str:
    """Cut a file to half its bytes (a copy interrupted midway)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path


def _cases(tmp: Path) -> list[tuple[str, object, str]]:
    """(what, spec mapping or raw YAML text, text the error line must contain)."""
    dead = f"127.0.0.1:{free_port()}"
    file_base = {**BASE, "dataset": {"name": "file", "path": "PATH"}}
    return [
        ("YAML syntax error", "name: x\nbase: {dataset: [\n", "YAML"),
        ("spec is a list", "- 1\n- 2\n", "expected a mapping"),
        ("a key given twice (PyYAML kept the last)", "name: a\nname: b\n", "line 2: not valid YAML (the key 'name' "
                                                                            "is given twice in one mapping)"),
        ("unknown top-level key", _with("resorces", {"cpu": 1}), "did you mean 'resources'"),
        ("unknown train-config key", _with("base.objective.betta", 2), "did you mean 'beta'"),
        ("typo in a search path", _with("search.space", {"objective.betta": {"uniform": [1, 2]}}), "objective.betta"),
        ("wrong type", _with("search.trials", "many"), "search.trials"),
        ("β ≤ 0", _with("base.objective.beta", 0), "objective.beta"),
        ("true where a number is meant", _with("base.train.steps", True), "train.steps: expected a number"),
        ("false for a resource", _with("resources.cpu", False), "resources.cpu: expected a number"),
        ("latent_dim 0", _with("base.model.latent_dim", 0), "model.latent_dim"),
        ("log_uniform low ≥ high", _with("search.space", {"objective.beta": {"log_uniform": [4, 1]}}), "low < high"),
        ("log_uniform low ≤ 0", _with("search.space", {"objective.beta": {"log_uniform": [0, 1]}}), "0 < low"),
        ("empty choice", _with("search.space", {"model.latent_dim": {"choice": []}}), "non-empty"),
        ("unknown distribution", _with("search.space", {"objective.beta": {"normal": [0, 1]}}), "log_uniform"),
        ("empty search space", _with("search.space", {}), "search.space"),
        ("unknown sampler", _with("search.sampler", "bayes"), "search.sampler"),
        ("a negative sampler seed", _with("search.seed", -1), "search.seed: input should be greater than or equal to 0"),
        ("unknown schedule", _with("base.objective.schedule", {"kind": "cosine"}), "objective.schedule.kind"),
        ("grid over a range", _with("search.sampler", "grid"), "grid sampler"),
        ("fractional GPUs over 1", _with("resources.gpu", 1.5), "resources.gpu"),
        ("more cores a trial than the local Ray has (Tune would wait forever)",
         {**_with("resources.cpu", 4), "ray": {"num_cpus": 2}}, "resources.cpu: each trial asks for 4 cores"),
        ("more GPUs a trial than the machine has", _with("resources.gpu", 64), "resources.gpu: each trial asks for 64"),
        ("an infinite learning rate", _with("base.train.lr", float("inf")), "train.lr: input should be a finite"),
        ("scheduler on an unknown metric", _with("search.scheduler", {"metric": "elbo"}), "scheduler.metric"),
        ("a scheduler keeping the worst fits", _with("search.scheduler", {"metric": "nelbo", "mode": "max"}),
         "search.scheduler.mode: max keeps the trials with the highest nelbo"),
        ("cohort of 0", _with("search.cohort", 0), "search.cohort"),
        ("no objectives", _with("search.objectives", []), "search.objectives: list should have at least 1 item"),
        ("β searched under a capacity schedule (every trial the same model)",
         _with("base.objective.schedule", {"kind": "linear_capacity", "c_max": 5.0, "ramp_steps": 10}),
         "search.space.objective.beta: no trial uses it (objective.schedule linear_capacity weighs the KL by its "
         "gamma, not β)"),
        ("the hidden width searched for a conv model", {**GOOD, "base": {**BASE, "model": {"arch": "burgess",
                                                                                           "latent_dim": 4}},
                                                        "search": {"trials": 2, "space": {"model.hidden": {
                                                            "choice": [8, 64]}}}},
         "search.space.model.hidden: no trial uses it (model.arch burgess has no hidden width to set"),
        ("a train config given as a spec", BASE, "this is a train config (it has dataset, no base or search): train "
                                                 "it with `bvae train"),
        ("a train config's field at the top (--set train.steps=50 for base.train.steps)", _with("train", {"steps": 50}),
         "train: unknown key in a sweep spec; the train config's fields go under base (base.train…"),
        ("an objective given twice", _with("search.objectives", ["rate", "rate"]),
         "search.objectives: expected each name once ('rate' is given twice)"),
        ("a 300-character name (MLflow: 'File name too long', its parent run left RUNNING)", _with("name", "a" * 300),
         "name: string should have at most 100 characters, got 'aaaa"),
        ("a storage scheme no file system reads (a typo of s3://)", {**GOOD, "storage": {"path": "s4://bucket/x"}},
         "storage.path: unsupported scheme 's4://'"),
        ("a NaN reference distortion", {**GOOD, "frontier": {"reference_distortion": float("nan")}},
         "frontier.reference_distortion: input should be a finite number"),
        ("uniform over a field of whole numbers", _with("search.space", {"model.latent_dim": {"uniform": [2, 8]}}),
         "search.space.model.latent_dim: a value inside its range is refused (model.latent_dim: input should be a "
         "valid integer"),
        ("a bad value in a choice nested in a choice option", _with("search.space", {"objective.schedule": {"choice": [
            {"kind": "linear_capacity", "ramp_steps": 10, "c_max": {"choice": [5.0, -1.0]}}]}}),
         "search.space.objective.schedule: objective.schedule.c_max: input should be greater than or equal to 0"),
        ("a GPU this machine does not have", _with("base.train.device", "cuda:64"),
         "base.train.device: cuda:64 requested but"),
        ("scheduler halving by ≤ 1", _with("search.scheduler", {"metric": "nelbo", "reduction_factor": 1}),
         "search.scheduler.reduction_factor"),
        ("metrics without factors", {**_with("base", {**BASE, "dataset": {"name": "gaussian", "eigenvalues": [1.0, 0.5]},
                                                      "model": {"arch": "mlp", "latent_dim": 2,
                                                                "likelihood": {"kind": "gaussian"}}}),
                                     "eval": {"metrics": ["mig"]}}, "eval.metrics"),  # fmt: skip
        ("a rendered metric with a file a choice offers", {**GOOD, "eval": {"metrics": ["betavae_score"]}, "search": {
            "trials": 2, "space": {"dataset": {"choice": [{"name": "blobs", "resolution": 32},
                                                          {"name": "file", "path": str(tmp / "any.npz")}]}}}},
         "eval.metrics: betavae_score is not available on a file dataset"),
        ("real-valued data with the default Bernoulli likelihood",
         _with("base.dataset", {"name": "gaussian", "eigenvalues": [1.0, 0.5]}),
         "model.likelihood: bernoulli needs values in [0, 1]; the gaussian dataset's are real numbers"),
        ("a factor grid too small to hold out 2 examples", _with("base.dataset", {"name": "blobs", "grid": 1}),
         "dataset.grid: expected at least 2"),
        ("eval_every > steps", _with("base.train.eval_every", 100), "train.eval_every"),
        ("blobs at 48 px for the burgess model", _with("base", {**BASE, "model": {"arch": "burgess", "latent_dim": 4},
                                                                "dataset": {"name": "blobs", "resolution": 48}}),
         "base.dataset.resolution: expected 32 or 64 for model.arch burgess"),  # fmt: skip
        ("name escaping the storage folder", _with("name", "../../etc"), "name"),
        ("evaluation on 1 example", _with("base.train.n_eval", 1), "train.n_eval"),
        ("missing data file", {**GOOD, "base": {**file_base, "dataset": {"name": "file", "path": str(tmp / "no.npz")}}},
         "no.npz"),
        ("a missing data file a choice offers (it errored in the trials that drew it)", {**GOOD, "base": {
            **file_base, "dataset": {"name": "file", "path": _npz(tmp, "good.npz", images=np.zeros((40, 32, 32)))}},
            "search": {"trials": 2, "space": {"dataset.path": {"choice": [str(tmp / "good.npz"),
                                                                          str(tmp / "offered.npz")]}}}},
         "offered.npz"),
        ("data path is a folder", {**GOOD, "base": {**file_base, "dataset": {"name": "file", "path": str(tmp)}}},
         str(tmp)),
        ("wrong-shaped data", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "flat.npz", images=np.zeros(10))}}}, "flat.npz"),
        ("images of the wrong size for the model", {**GOOD, "base": {**file_base, "model": {"arch": "burgess"},
            "dataset": {"name": "file", "path": _npz(tmp, "odd.npz", images=np.zeros((40, 48, 48), np.uint8))}}},
         "32 or 64 px"),
        ("images outside [0, 1] for the Bernoulli likelihood", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "w255.npz", images=np.full((40, 32, 32), 255.0, np.float32))}}},
         "model.likelihood: bernoulli needs values in [0, 1]"),
        ("metrics on a file without factors", {**GOOD, "eval": {"metrics": ["mig"]}, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "nofactors.npz", images=np.zeros((40, 32, 32), np.uint8))}}},
         "eval.metrics: " + str(tmp / "nofactors.npz") + " holds no factors"),
        ("16-bit integer images", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "i16.npz", images=(np.arange(40 * 1024) % 256 - 100).reshape(40, 32, 32)
                                         .astype(np.int16))}}},
         "integer images must hold 0..255 (8-bit pixels) or 0/1, got int16 values -100 to"),
        ("factors as a flat list", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "flatfactors.npz", images=np.zeros((40, 32, 32), np.uint8),
                                         factors=np.arange(40))}}},
         "factors must be integers [N, n_factors], one row per image"),
        ("a cut-off .npz file", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _truncated(_npz(tmp, "cut.npz", images=np.zeros((40, 32, 32), np.uint8)))}}},
         "cut.npz is not a readable .npz file"),
        ("an image array the .npz does not hold", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "image_column": "pixels",
            "path": _npz(tmp, "named.npz", images=np.zeros((40, 32, 32), np.uint8))}}},
         "dataset.image_column: " + str(tmp / "named.npz") + " has no array 'pixels' (arrays: images)"),
        ("factor columns for a .npz", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "factor_columns": ["shape"],
            "path": _npz(tmp, "cols.npz", images=np.zeros((40, 32, 32), np.uint8))}}},
         "dataset.factor_columns: applies to Parquet files"),
        ("a file of 2 examples", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "two.npz", images=np.zeros((2, 32, 32), np.uint8))}}},
         "holds 2 example(s); need at least 3"),
        ("a Parquet file of no rows", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _parquet(tmp, "empty.parquet", image=[[0.0] * 4][:0])}}},
         "empty.parquet holds no rows"),
        ("Parquet rows of different sizes", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _parquet(tmp, "ragged.parquet", image=[[0.0] * 1024] * 20 + [[0.0] * 900] * 20)}}},
         "every row must hold an image of one shape"),
        ("NaN in the images", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "nan.npz", images=np.full((40, 32, 32), np.nan, np.float32))}}},
         "NaN or infinite"),
        ("fewer factor names than factors", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "names.npz", images=np.zeros((40, 32, 32), np.uint8),
                                         factors=np.zeros((40, 2), np.int64), factor_names=np.array(["only"]))}}},
         "factor_names holds 1 name(s) for 2 factor column(s)"),
        ("an array of Python objects", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "objects.npz", images=np.array([None] * 40, dtype=object))}}},
         "objects.npz: array 'images' holds Python objects"),
        ("an empty value in a Parquet factor column", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _parquet(tmp, "nulls.parquet", image=[[0.0] * 1024] * 40,
                                             shape=[1, None] * 20)}}},
         "dataset.factor_columns: column 'shape' of " + str(tmp / "nulls.parquet") + " has 20 empty (null) value(s)"),
        ("dci on a file with one varying factor", {**GOOD, "eval": {"metrics": ["dci"]}, "base": {**file_base,
            "dataset": {"name": "file", "path": _npz(tmp, "onefactor.npz", images=np.zeros((40, 32, 32), np.uint8),
                                                     factors=np.stack([np.arange(40) % 4, np.zeros(40, int)], 1))}}},
         "eval.metrics: dci needs at least 2 factor(s) that vary; " + str(tmp / "onefactor.npz")
         + " has 1 (factor0) of factor0, factor1"),
        ("mig with a searched latent size of 1", {**_with("search.space", {"model.latent_dim": {"int": [1, 4]}}),
                                                  "eval": {"metrics": ["mig"]}},
         "eval.metrics: mig needs at least 2 latent dimensions (it compares the two most informative), and "
         "model.latent_dim can be 1"),
        ("tracking URI of no store MLflow knows", {**GOOD, "tracking": {"uri": "foo://bar"}},
         "tracking.uri: unsupported scheme 'foo:'"),
        ("unreachable tracking server", {**GOOD, "tracking": {"uri": f"http://{dead}"}}, "tracking.uri"),
        ("unreachable Ray address", {**GOOD, "ray": {"address": dead}}, "ray.address"),
        ("storage path under a file", {**GOOD, "storage": {"path": str(tmp / "spec-as-folder.yaml" / "x")}},
         "storage.path"),
    ]  # fmt: skip


def test_each_malformed_input_exits_2_with_one_line_and_starts_nothing(tmp_path, capsys, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cases = _cases(data_dir)
    assert len(cases) >= 25
    (data_dir / "spec-as-folder.yaml").write_text("")
    failures = []
    for i, (what, spec, expected) in enumerate(cases):
        work = tmp_path / f"case{i}"
        work.mkdir()
        monkeypatch.chdir(work)
        spec_file = work / "spec.yaml"
        spec_file.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
        code = main(["sweep", "run", str(spec_file)])
        err = capsys.readouterr().err.strip()
        made = sorted(p.name for p in work.iterdir() if p.name != "spec.yaml")
        if code != 2 or "\n" in err or expected not in err or made:
            failures.append(f"{what}: exit {code}, made {made}, stderr {err!r}")
    assert not failures, "\n".join(failures)


def test_a_malformed_override_and_a_missing_spec_are_refused_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    assert main(["sweep", "run", str(spec), "--set", "search.trials"]) == 2
    assert "--set" in capsys.readouterr().err
    for item, expected in (("base.train.steps=", "no value after '='"), (".=1", "none empty"),
                           ("base..steps=1", "none empty")):  # were "…got None", ": unknown key"  # fmt: skip
        assert main(["sweep", "run", str(spec), "--set", item]) == 2
        assert f"--set {item}: " in (err := capsys.readouterr().err) and expected in err, err
    assert main(["sweep", "run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err
    assert main(["pick", "nosuch", "--rule", "knee", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no tracking store" in capsys.readouterr().err
    assert main(["pick", "nosuch", "--rule", "knee", "--tracking-uri", "s3://bucket/mlruns"]) == 2
    assert "--tracking-uri: unsupported scheme 's3:'" in capsys.readouterr().err
    assert main(["sweep", "run", str(spec), "--tracking-uri", "foo:bar"]) == 2
    assert "tracking.uri: unsupported scheme 'foo:'" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
    # local stores MLflow cannot open: it retried a folder for minutes, printed SQL for a file that is no database,
    # and refused the file store with exit 1
    (tmp_path / "folder").mkdir()
    for uri, expected in ((f"sqlite:///{tmp_path}/folder", "folder is a folder; expected an SQLite database file"),
                          (f"sqlite:///{spec}", "spec.yaml is not an SQLite database"),
                          ("mlruns", "is MLflow's file store (./mlruns), which MLflow 3 opens only with "
                                     "MLFLOW_ALLOW_FILE_STORE=true")):  # fmt: skip
        for argv in (["frontier", "s", "--tracking-uri", uri], ["sweep", "run", str(spec), "--tracking-uri", uri]):
            assert main(argv) == 2, (argv, capsys.readouterr())
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and expected in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "spec.yaml"]  # nothing made


def test_bad_s3_credentials_exit_2_naming_the_storage_path(tmp_path, capsys, monkeypatch):
    """A real S3-compatible server that checks access keys (moto with auth on): a key it does not know is refused at
    the storage write probe, before anything starts."""
    s3 = start_moto(tmp_path / "moto", check_keys=True)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-NOT-A-KEY")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
        (work / "spec.yaml").write_text(yaml.safe_dump({**GOOD, "storage": {"path": "s3://sweeps/bad"}}))
        code = main(["sweep", "run", str(work / "spec.yaml")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert "storage.path: cannot write to s3://sweeps/bad" in err and "INVALID_ACCESS_KEY_ID" in err, err
        assert "not-a-secret" not in err  # the secret is never echoed
        assert sorted(p.name for p in work.iterdir()) == ["spec.yaml"]  # nothing started, nothing written
    finally:
        s3.stop()


# ---------------------------------------------------------------- bvae frontier / bvae pick on a sweep in a store
@pytest.fixture(scope="module")
def stored_sweep(tmp_path_factory) -> tuple[str, str]:
    return _store_sweep(tmp_path_factory.mktemp("stored"))


def _store_sweep(tmp: Path) -> tuple[str, str]:
    """A sweep as `bvae frontier` / `bvae pick` read it (no Ray): a parent run and three completed child runs, each
    with a real checkpoint, the middle one (the knee) a controlled-capacity trial. (tracking URI, parent run id)."""
    from mlflow import MlflowClient

    from bvae_core import Trainer

    trainer = Trainer({"dataset": {"name": "gaussian", "eigenvalues": [4.0, 1.0], "n_train": 200, "n_test": 50},
                       "model": {"arch": "linear", "latent_dim": 2, "likelihood": {"kind": "gaussian", "sigma": 1.0}},
                       "train": {"steps": 10, "eval_every": 10, "batch_size": 16, "device": "cpu"}})  # fmt: skip
    (tmp / "checkpoint").mkdir()
    trainer.save(tmp / "checkpoint" / "checkpoint.pt")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("stored", artifact_location=str(tmp / "artifacts"))
    parent = client.create_run(experiment, tags={"bvae.sweep": "stored", "bvae.sweep_key": str(tmp)}).info.run_id
    for i, (rate, distortion, config) in enumerate([(1.0, 9.0, {"beta": "4.0"}), (3.0, 4.0, {"c_max": "9.5"}),
                                                    (6.0, 2.0, {"beta": "0.5"})]):  # fmt: skip
        tags = {"mlflow.parentRunId": parent, "bvae.trial_id": f"t{i}", "bvae.status": "completed",
                **{f"bvae.config.{k}": v for k, v in config.items()}}  # fmt: skip
        run = client.create_run(experiment, tags=tags).info.run_id
        client.log_metric(run, "rate", rate)
        client.log_metric(run, "distortion", distortion)
        client.log_artifacts(run, str(tmp / "checkpoint"), artifact_path="checkpoint")
        client.set_terminated(run)
    return uri, parent


def _frontier_and_pick_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(what, arguments after the sweep name, text the error line must contain)."""
    (tmp / "notes.md").write_text("a file")
    (tmp / "folder.parquet").mkdir()
    knee = ["pick", "--rule", "knee"]
    return [
        ("--out not .parquet", ["frontier", "--out", "frontier.csv"], "--out: expected a file name ending in .parquet"),
        ("--out empty", ["frontier", "--out", ""], "(the table is written as Parquet), got ''"),
        ("--out under a file", ["frontier", "--out", str(tmp / "notes.md" / "f.parquet")],
         f"--out: cannot write {tmp / 'notes.md' / 'f.parquet'}: {tmp / 'notes.md'} is a file"),
        ("--out an existing folder", ["frontier", "--out", str(tmp / "folder.parquet")],
         f"--out: {tmp / 'folder.parquet'} is a directory"),
        ("--max-distortion with knee", [*knee, "--max-distortion", "60"],
         "--max-distortion: applies only to the max-METRIC rules (got --rule knee)"),
        ("--max-distortion with max-rate", ["pick", "--rule", "max-rate=8", "--max-distortion", "60"],
         "--max-distortion: applies only to the max-METRIC rules (got --rule max-rate=8)"),
        ("--max-distortion with max-distortion", ["pick", "--rule", "max-distortion=40", "--max-distortion", "60"],
         "--max-distortion: applies only to the max-METRIC rules (got --rule max-distortion=40)"),
        ("--max-distortion not finite", ["pick", "--rule", "max-mig", "--max-distortion", "nan"],
         "--max-distortion: expected a finite number"),
        ("--alias without --register", [*knee, "--alias", "best"], "--alias: applies only with --register"),
        ("--register with a slash", [*knee, "--register", "bad name/with/slash"],
         "--register: Invalid model name 'bad name/with/slash'. Names cannot contain '/' or ':'"),
        ("--register empty", [*knee, "--register", ""], "--register: expected a model name"),
        ("--alias reserved", [*knee, "--register", "vae", "--alias", "latest"], "--alias: 'latest'"),
        ("--alias with a space", [*knee, "--register", "vae", "--alias", "a b"], "--alias: Invalid alias name: 'a b'"),
    ]  # fmt: skip


def test_each_malformed_frontier_or_pick_flag_exits_2_and_writes_nothing(stored_sweep, tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    uri, parent = stored_sweep
    client = MlflowClient(uri)
    monkeypatch.chdir(tmp_path)
    failures = []
    for what, args, expected in _frontier_and_pick_cases(tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        code = main([args[0], "stored", *args[1:], "--tracking-uri", uri])
        err = capsys.readouterr().err.strip()
        made = sorted({p.name for p in tmp_path.iterdir()} - set(before))
        if code != 2 or "\n" in err or expected not in err or made:
            failures.append(f"{what}: exit {code}, made {made}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    # nothing half-done: no pick recorded, no model logged to a trial's run, nothing registered
    assert not [k for k in client.get_run(parent).data.tags if k.startswith("bvae.pick.")]
    for run in client.search_runs([client.get_run(parent).info.experiment_id]):
        assert "model" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.search_registered_models() == []


def test_registering_a_pick_whose_checkpoint_is_gone_says_so_and_registers_nothing(tmp_path, capsys):
    """The dev stack's S3 keeps objects in memory: after `down` and `up` the runs are there, their files are not.
    Was MLflow's "Failed to download artifacts from path 'checkpoint.pt'" as an unexplained failure."""
    import shutil

    from mlflow import MlflowClient

    uri, parent = _store_sweep(tmp_path)
    shutil.rmtree(tmp_path / "artifacts")
    assert main(["pick", "stored", "--rule", "knee", "--register", "vae", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("bvae pick: error: --register: the checkpoint of trial "), err
    assert "the run's files are gone from the artifact store (nothing was registered)" in err
    client = MlflowClient(uri)
    assert client.search_registered_models() == []
    assert not [k for k in client.get_run(parent).data.tags if k.startswith("bvae.pick.")]



def test_a_sweep_another_process_runs_is_refused_and_nothing_started(tmp_path, capsys, monkeypatch):
    """Two `bvae sweep resume` of one sweep at once both ran: a 3-trial sweep ended with 5 runs, trials doubled."""
    from sweeps.runner import sweep_lock
    from sweeps.spec import parse_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GOOD))
    with sweep_lock(parse_spec(copy.deepcopy(GOOD))):  # another driver holds it (its pid is in the lock file)
        for verb in ("run", "resume"):
            assert main(["sweep", verb, "spec.yaml"]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("bvae sweep: error: name: sweep 'bad' is being run by another process (pid "
                                  f"{os.getpid()}, on this machine or one sharing ") and "\n" not in err, err  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ray_results", "spec.yaml"]  # no tracking store, no run
    assert [p.name for p in (tmp_path / "ray_results").iterdir()] == [".bad.lock"]
    # a resume with nowhere to resume from makes no folder for its lock (it says there is no sweep, and exits 2)
    assert main(["sweep", "resume", "spec.yaml", "--set", "storage.path=elsewhere"]) == 2
    assert "no sweep 'bad' to resume" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists()
    from sweeps.runner import SweepBusy

    via_uri = parse_spec({**copy.deepcopy(GOOD), "storage": {"path": f"file://{tmp_path}/via-uri"}})  # a folder too
    with sweep_lock(via_uri), pytest.raises(SweepBusy), sweep_lock(via_uri):
        pass
