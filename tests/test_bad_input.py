"""Malformed input, tried as users get it wrong: each case exits 2 with one line on stderr that names the field or the
resource and what was expected, starts nothing (no Ray, no storage folder, no tracking store) and leaves no parent
run behind."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
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


def _cases(tmp: Path) -> list[tuple[str, object, str]]:
    """(what, spec mapping or raw YAML text, text the error line must contain)."""
    dead = f"127.0.0.1:{free_port()}"
    file_base = {**BASE, "dataset": {"name": "file", "path": "PATH"}}
    return [
        ("YAML syntax error", "name: x\nbase: {dataset: [\n", "YAML"),
        ("spec is a list", "- 1\n- 2\n", "expected a mapping"),
        ("unknown top-level key", _with("resorces", {"cpu": 1}), "did you mean 'resources'"),
        ("unknown train-config key", _with("base.objective.betta", 2), "did you mean 'beta'"),
        ("typo in a search path", _with("search.space", {"objective.betta": {"uniform": [1, 2]}}), "objective.betta"),
        ("wrong type", _with("search.trials", "many"), "search.trials"),
        ("β ≤ 0", _with("base.objective.beta", 0), "objective.beta"),
        ("latent_dim 0", _with("base.model.latent_dim", 0), "model.latent_dim"),
        ("log_uniform low ≥ high", _with("search.space", {"objective.beta": {"log_uniform": [4, 1]}}), "low < high"),
        ("log_uniform low ≤ 0", _with("search.space", {"objective.beta": {"log_uniform": [0, 1]}}), "0 < low"),
        ("empty choice", _with("search.space", {"model.latent_dim": {"choice": []}}), "non-empty"),
        ("unknown distribution", _with("search.space", {"objective.beta": {"normal": [0, 1]}}), "log_uniform"),
        ("empty search space", _with("search.space", {}), "search.space"),
        ("unknown sampler", _with("search.sampler", "bayes"), "search.sampler"),
        ("unknown schedule", _with("base.objective.schedule", {"kind": "cosine"}), "objective.schedule.kind"),
        ("grid over a range", _with("search.sampler", "grid"), "grid sampler"),
        ("fractional GPUs over 1", _with("resources.gpu", 1.5), "resources.gpu"),
        ("scheduler on an unknown metric", _with("search.scheduler", {"metric": "elbo"}), "scheduler.metric"),
        ("cohort of 0", _with("search.cohort", 0), "search.cohort"),
        ("scheduler halving by ≤ 1", _with("search.scheduler", {"metric": "nelbo", "reduction_factor": 1}),
         "search.scheduler.reduction_factor"),
        ("metrics without factors", {**_with("base.dataset", {"name": "gaussian", "eigenvalues": [1.0, 0.5]}),
                                     "eval": {"metrics": ["mig"]}}, "eval.metrics"),  # fmt: skip
        ("eval_every > steps", _with("base.train.eval_every", 100), "train.eval_every"),
        ("name escaping the storage folder", _with("name", "../../etc"), "name"),
        ("missing data file", {**GOOD, "base": {**file_base, "dataset": {"name": "file", "path": str(tmp / "no.npz")}}},
         "no.npz"),
        ("data path is a folder", {**GOOD, "base": {**file_base, "dataset": {"name": "file", "path": str(tmp)}}},
         str(tmp)),
        ("wrong-shaped data", {**GOOD, "base": {**file_base, "dataset": {
            "name": "file", "path": _npz(tmp, "flat.npz", images=np.zeros(10))}}}, "flat.npz"),
        ("images of the wrong size for the model", {**GOOD, "base": {**file_base, "model": {"arch": "burgess"},
            "dataset": {"name": "file", "path": _npz(tmp, "odd.npz", images=np.zeros((40, 48, 48), np.uint8))}}},
         "32 or 64 px"),
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


def test_a_malformed_override_and_a_missing_spec_are_refused_too(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GOOD))
    assert main(["sweep", "run", str(spec), "--set", "search.trials"]) == 2
    assert "--set" in capsys.readouterr().err
    assert main(["sweep", "run", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err
    assert main(["pick", "nosuch", "--rule", "knee", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no tracking store" in capsys.readouterr().err


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
