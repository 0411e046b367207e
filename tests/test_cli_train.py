"""`bvae train` as a user runs it: validation errors exit 2 with one line naming the field; a run prints progress
and the final metrics as JSON on its last line; --out writes checkpoint, resolved config, metrics and plots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bvae_core import Trainer

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 1,
    "dataset": {"name": "blobs", "resolution": 32, "grid": 8, "n_test": 16},
    "model": {"arch": "burgess", "latent_dim": 3, "likelihood": {"kind": "bernoulli"}},
    "objective": {"beta": 4.0, "schedule": {"kind": "constant"}},
    "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5},
}


def bvae(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_train_prints_progress_and_final_json(tiny_config, tmp_path):
    out = tmp_path / "run"
    result = bvae("train", str(tiny_config), "--out", str(out), "--set", "objective.beta=2")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["beta"] == 2.0 and metrics["step"] == 20
    assert {"rate", "distortion", "nelbo", "active_units", "kl/0", "kl/2"} <= metrics.keys()
    assert metrics["nelbo"] == pytest.approx(metrics["rate"] + metrics["distortion"])
    assert "eval step 10" in result.stderr and "step 20/20" in result.stderr
    for name in ("checkpoint.pt", "config.yaml", "metrics.json", "reconstructions.png", "traversals.png",
                 "kl_per_dim.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["objective"]["beta"] == 2.0 and resolved["train"]["lr"] == 5.0e-4  # defaults filled in
    # the checkpoint restores the model that produced the metrics
    restored = Trainer.load(out / "checkpoint.pt")
    assert restored.step == 20
    assert restored.evaluate()["rate"] == pytest.approx(metrics["rate"], rel=1e-6)
    assert "already holds a run" not in result.stderr
    again = bvae("train", str(tiny_config), "--out", str(out), "--quiet")  # into the same folder: said, not silent
    assert again.returncode == 0 and f"note: out: {out} already holds a run (checkpoint.pt)" in again.stderr
    # vector data has no images to show: the earlier run's reconstructions and traversals must not stay beside it
    vectors = tmp_path / "vectors.yaml"
    vectors.write_text(yaml.safe_dump({"dataset": {"name": "gaussian", "eigenvalues": [1.0, 0.5], "n_train": 200,
                                                   "n_test": 50},
                                       "model": {"arch": "linear", "latent_dim": 2, "likelihood": {"kind": "gaussian"}},
                                       "train": {"steps": 10, "eval_every": 10}}))  # fmt: skip
    third = bvae("train", str(vectors), "--out", str(out), "--quiet")
    assert third.returncode == 0 and f"traversals.png) move to {out / 'previous'}" in third.stderr, third.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml", "kl_per_dim.png", "metrics.json",
                                                     "previous"]  # fmt: skip
    kept = sorted(p.name for p in (out / "previous").iterdir())  # the earlier run, whole: nothing lost
    assert kept == ["checkpoint.pt", "config.yaml", "kl_per_dim.png", "metrics.json", "reconstructions.png",
                    "traversals.png"]  # fmt: skip


def test_same_config_same_numbers(tiny_config):
    a, b = (json.loads(bvae("train", str(tiny_config), "--quiet").stdout.splitlines()[-1]) for _ in range(2))
    assert a == b


@pytest.mark.parametrize("override,field", [
    ("train.stepz=3", "train.stepz: unknown key"),
    ("objective.beta=-1", "objective.beta: input should be greater than 0"),
    ("train.steps=abc", "train.steps: input should be a valid integer"),
    ("dataset.resolution=48", "dataset.resolution: expected 32 or 64 for model.arch burgess (any ≥ 8 for mlp or "
                              "linear), got 48"),  # fmt: skip
    ("dataset.resolution=4", "dataset.resolution: input should be greater than or equal to 8"),
    ("objective.schedule.kind=cosine", "objective.schedule.kind: expected one of"),
    ("model.arch=resnet", "model.arch: input should be"),
    ("train.eval_every=1000", "train.eval_every: expected ≤ train.steps"),
    ("dataset.n_test=64", "dataset.n_test: expected fewer than the grid's 64 positions, got 64"),
    ("objective.schedule={kind: free_bits, free_bits: -1}", "objective.schedule.free_bits: input should be greater"),
    ("train.device=tpu", "train.device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),  # was exit 1
    ("train.device=cuda:64", "train.device: cuda:64 requested but"),  # no CUDA here, or fewer than 65 devices
    ("dataset={name: dsprites, resolution: 32, n_test: 737280}", "dataset.n_test: input should be less than 737280"),
    ("objective.schedule={kind: linear_capacity, c_max: .inf}", "objective.schedule.c_max: input should be a finite "
                                                                "number"),  # was a non-finite loss at step 1
    ("model.likelihood={kind: gaussian, sigma: 1.0e-300}", "model.likelihood.sigma: input should be greater than or "
                                                           "equal to 0.000001"),  # was "math domain error", exit 1
    pytest.param("train.device=mps", "train.device: mps requested but MPS (Apple silicon) is not available",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),  # was 1
    # torch keeps a seed's low 32 bits: 2**32 trained as seed 0, -1 as 2**32 - 1; 2**64 was "Overflow when unpacking"
    ("seed=4294967296", "seed: input should be less than 4294967295, got 4294967296"),
    ("seed=-1", "seed: input should be greater than or equal to 0, got -1"),
    ("dataset.split_seed=99999999999999999999", "dataset.split_seed: input should be less than 4294967295"),
])  # fmt: skip
def test_bad_config_exits_2_with_one_line_naming_the_field(tiny_config, override, field, capsys):
    from sweeps.cli import main

    assert main(["train", str(tiny_config), "--set", override]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], captured.err
    assert captured.out == ""


def test_missing_and_malformed_files_exit_2(tmp_path):
    missing = bvae("train", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {name: blobs\nmodel: [")
    malformed = bvae("train", str(bad))
    assert malformed.returncode == 2 and "not valid YAML" in malformed.stderr
    assert len(malformed.stderr.strip().splitlines()) == 1
    data_missing = tmp_path / "f.yaml"
    data_missing.write_text(yaml.safe_dump({**TINY, "dataset": {"name": "file", "path": str(tmp_path / "x.npz")}}))
    result = bvae("train", str(data_missing))
    assert result.returncode == 2 and "dataset.path" in result.stderr


def test_an_out_path_that_cannot_be_a_folder_exits_2_before_training(tiny_config, tmp_path, capsys):
    from sweeps.cli import main

    taken = tmp_path / "train.out"
    taken.write_text("mine")
    assert main(["train", str(tiny_config), "--out", str(taken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"out: {taken} is a file" in err and "training" not in err
    assert taken.read_text() == "mine"
    assert main(["train", str(tiny_config), "--out", str(taken / "below")]) == 2
    assert "out: cannot create the folder" in capsys.readouterr().err
    assert main(["train", str(tiny_config), "--out", ""]) == 2  # wrote into the working directory before
    assert "out: expected a folder for the run's files, got an empty path" in capsys.readouterr().err


def test_a_read_only_out_folder_exits_2_before_training(tiny_config, tmp_path, capsys, monkeypatch):
    """A folder that exists but cannot be written failed with exit 1 (an OSError) where a new one exited 2."""
    from pathlib import Path

    from sweeps.cli import main

    folder = tmp_path / "ro"
    folder.mkdir()
    real_write = Path.write_text

    def read_only(self, *args, **kwargs):  # as a read-only mount answers (root ignores chmod: no real mount here)
        if self.parent == folder:
            raise OSError(30, "Read-only file system", str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert main(["train", str(tiny_config), "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bvae train: error: out: cannot write to the folder {folder}: Read-only file system"


def test_metrics_json_is_strict_json():
    from bvae_core.run import metrics_json

    text = metrics_json({"rate": 1.5, "dimwise_kl": float("nan"), "distortion": float("inf"), "step": 3})
    assert json.loads(text) == {"dimwise_kl": None, "distortion": None, "rate": 1.5, "step": 3}
    assert "NaN" not in text and "Infinity" not in text


def test_shipped_configs_validate():
    from bvae_core.config import load_config_file, parse_config

    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        parse_config(load_config_file(path))


def test_a_reader_that_stops_reading_ends_the_command_quietly(tiny_config):
    """`bvae train … | head -c0`, `bvae frontier --json | head`: the closed pipe is the reader's choice, not a
    failure — exit 0, nothing on stderr about a broken pipe."""
    process = subprocess.Popen([sys.executable, "-m", "sweeps", "train", str(tiny_config), "--quiet"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    process.stdout.close()  # before the command writes its JSON line
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "Broken pipe" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize("train, eval_every", [
    ({"steps": 200}, 200),  # a short run left with the default: evaluated once, at its end
    ({"steps": 5000}, 1000),  # the default
    ({"steps": 200, "eval_every": 50}, 50),  # given: kept
    ({"steps": 2e2}, 200),  # --set train.steps=2e2, 200.0 or "200": refused as eval_every 1000 > steps before
    ({"steps": "200"}, 200),
])  # fmt: skip
def test_eval_every_defaults_to_at_most_the_run(train, eval_every):
    from bvae_core.config import TrainConfig

    assert TrainConfig(dataset={"name": "blobs"}, train=train).train.eval_every == eval_every


def test_a_given_eval_every_beyond_the_run_is_still_refused():
    from bvae_core.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"train.eval_every: expected ≤ train.steps \(200\), got 500"):
        parse_config({"dataset": {"name": "blobs"}, "train": {"steps": 200, "eval_every": 500}})


def test_a_parquet_file_read_with_torch_loaded_never_aborts_the_exit(tmp_path):
    """Parquet read by pyarrow's read_table once torch was imported aborted the interpreter at exit about half the
    time (rc 134, "terminate called without an active exception"), after the one-line error had been printed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wrong_column.parquet"
    pq.write_table(pa.table({"img": [[0.0] * 16] * 8, "x": list(range(8))}), path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "dataset": {"name": "file", "path": str(path)},
                                      "model": {"arch": "mlp", "latent_dim": 2}}))  # fmt: skip
    codes = [bvae("train", str(config)).returncode for _ in range(6)]  # aborted 4 times in 8 before
    assert codes == [2] * 6


def test_yaml_keys_given_twice_are_refused_but_merge_keys_may_override():
    import yaml as pyyaml

    from bvae_core.config import load_yaml

    with pytest.raises(pyyaml.YAMLError, match="the key 'seed' is given twice"):
        load_yaml("seed: 1\nmodel: {arch: mlp}\nseed: 2\n")
    assert load_yaml("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n") == {"a": {"b": 1}, "c": {"b": 2}}


@pytest.mark.parametrize("after_s", [0.3, 1.5])
def test_ctrl_c_at_any_moment_ends_with_one_line_and_exit_130(tiny_config, after_s):
    """Ctrl+C while torch was still importing (the first second) printed a 50-line KeyboardInterrupt traceback."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "sweeps", "train", str(tiny_config), "--set", "train.steps=100000"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(after_s)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("training ", "step "))]
    # 130, or ended by SIGINT itself (-2; a shell shows both as 130): Python re-raises the signal at exit when a
    # library saw the KeyboardInterrupt first, whatever the handler returned
    assert process.returncode in (130, -2) and len(lines) == 1 and "interrupted" in lines[0], err


def test_bvae_says_its_version():
    result = bvae("--version")
    assert result.returncode == 0 and result.stdout.startswith("bvae ")


def test_a_sweep_spec_given_to_train_says_what_it_is(tmp_path, capsys):
    from sweeps.cli import main

    spec = tmp_path / "spec.yaml"
    for first in ({}, {"tracking": {"uri": "sqlite:///m.db"}}):  # whichever key pydantic names first
        spec.write_text(yaml.safe_dump({**first, "name": "s", "base": TINY,
                                        "search": {"space": {"objective.beta": {"uniform": [1, 2]}}}}, sort_keys=False))
        assert main(["train", str(spec)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"bvae train: error: {spec} is a sweep spec (it has base and search): run it with `bvae sweep "
                       f"run {spec}`; `bvae train` takes a train config (what a spec holds as base)")  # fmt: skip



def test_a_ramp_longer_than_the_run_is_a_note(tiny_config, capsys):
    """The default capacity ramp is the paper's 100,000 steps: a short run never reaches c_max, and said nothing."""
    from sweeps.cli import main

    assert main(["train", str(tiny_config), "--quiet", "--set", "objective.schedule={kind: linear_capacity}"]) == 0
    err = capsys.readouterr().err
    assert "note: objective.schedule.ramp_steps (100000) is longer than train.steps (" in err
    assert ": C(t) ends at 0.02% of c_max (0.005 of 25 nats)" in err, err


def test_a_cuda_index_past_the_machines_devices_is_named(monkeypatch):
    """``cuda:3`` on a 2-GPU machine: the count, not CUDA's "invalid device ordinal" mid-setup."""
    from bvae_core.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^train\.device: cuda:3 requested but this machine has 2 CUDA device\(s\) "
                                         r"\(cuda:0 to cuda:1\)$"):  # fmt: skip
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("argv, expected", [
    (["pick", "s", "--rule", "max-mig", "--max-distortion", "abc"],
     "bvae pick: error: argument --max-distortion: invalid float value: 'abc' (see bvae pick --help)"),
    (["sweep", "run"], "bvae sweep run: error: the following arguments are required: spec (see bvae sweep run --help)"),
])  # fmt: skip
def test_a_mistyped_command_line_is_one_line_too(argv, expected, capsys):
    """argparse printed its usage block first: 5 lines for one wrong flag."""
    from sweeps.cli import main

    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2 and capsys.readouterr().err == expected + "\n"
