"""ray_cluster.yaml and the node image, checked without a cloud account: the file against Ray's own cluster-config
schema (as `ray up` fills and validates it), the shape the project relies on (a head that runs no trial, spot GPU
workers from zero with an instance profile, the node image, the project at a known path, the dashboard kept on the
head's loopback), and the versions of the image against requirements.txt."""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "ray_cluster.yaml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
PROJECT_PATH = "/home/ray/bvae"


def pins() -> dict[str, str]:
    """``name -> version`` of every ``name[extras]==version`` line of requirements.txt."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s#;]+)", line)
        if m:
            found[m.group(1).lower()] = m.group(3)
    return found


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_config_passes_rays_own_schema(config):
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    validate_config(prepare_config(config))  # what `ray up` does before touching the cloud


def test_the_schema_check_catches_a_broken_config(config):
    import jsonschema
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    broken = {**config, "available_node_types": {**config["available_node_types"], "gpu_worker": {"min_workers": 0}}}
    with pytest.raises(jsonschema.ValidationError, match="required"):
        validate_config(prepare_config(broken))


def _start_command(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, commands
    return starts[0]


def test_no_trial_ever_runs_on_the_on_demand_head(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand
    start = _start_command(config["head_start_ray_commands"])
    assert "--head" in start and "--num-cpus=0" in start and "--num-gpus=0" in start
    # the dashboard / Jobs API only on the head's loopback: `ray dashboard ray_cluster.yaml` tunnels to it
    assert "--dashboard-host=127.0.0.1" in start and "--dashboard-port=8265" in start
    assert "security_group" not in config["provider"]  # the launcher's own group: SSH and node-to-node only


def test_gpu_workers_are_spot_from_zero_with_s3_access(config):
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers, "no worker type"
    for name, worker in workers.items():
        assert worker["min_workers"] == 0, name
        assert worker["resources"].get("GPU", 0) >= 1, name
        assert worker["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}, name
        assert worker["node_config"]["IamInstanceProfile"], name  # the launcher gives one to the head only
        assert worker["max_workers"] <= config["max_workers"]


def test_every_node_runs_the_project_image_with_the_project_at_a_known_path(config):
    docker = config["docker"]
    assert docker["image"] and "head_image" not in docker and "worker_image" not in docker
    assert config["file_mounts"] == {PROJECT_PATH: "."}
    assert {".git", ".venv"} <= set(config["rsync_exclude"])
    setup = " ".join(config["setup_commands"])
    assert f"cd {PROJECT_PATH}" in setup and "~" not in setup  # installs in the project, not in $HOME
    assert "-r requirements.txt" not in setup  # the requirements are in the image
    run_options = " ".join(docker["run_options"])
    assert "MLFLOW_TRACKING_URI=" in run_options  # the tracking server, for the driver and every trial


def test_image_and_versions_match_requirements(config):
    pinned = pins()
    ray, torch = pinned["ray"], pinned["torch"]
    python = re.search(r">=\s*3\.(\d+)", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                       ["requires-python"]).group(1)  # fmt: skip
    assert f"ray{ray}-py3{python}-gpu" in config["docker"]["image"], config["docker"]["image"]
    dockerfile = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile, flags=re.M))
    assert args["RAY_VERSION"] == ray and args["TORCH_VERSION"] == torch, args
    froms = re.findall(r"^FROM (\S+)", dockerfile, flags=re.M)
    assert froms == [f"rayproject/ray:${{RAY_VERSION}}-py3{python}-gpu"], froms  # not the frozen ray-ml images
    assert "requirements.txt" in dockerfile and "pip install --no-deps -e ." in dockerfile
    assert f"WORKDIR {PROJECT_PATH}" in dockerfile


# ---------------------------------------------------------------- `bvae sweep submit`: what is refused before any cluster
QUICKSTART = str(ROOT / "sweeps" / "configs" / "quickstart.yaml")


@pytest.mark.parametrize("argv, field", [
    ([], "storage.path"),  # ./ray_results: not where other nodes or the next driver find it
    (["--set", "storage.path=s3://bucket/sweeps"], "tracking.uri"),  # sqlite:///mlflow.db: the driver's own folder
    (["--set", "storage.path=s3://bucket/sweeps", "--tracking-uri", "http://127.0.0.1:9", "--env", "NOVALUE"], "--env"),
    (["--set", "storage.path=s3://bucket/sweeps", "--tracking-uri", "http://127.0.0.1:9", "--address",
      "127.0.0.1:8265"], "--address"),
    (["--set", "storage.path=s3://bucket/sweeps", "--tracking-uri", "http://127.0.0.1:9", "--address",
      "http://127.0.0.1:9"], "--address"),  # nothing answers there
])  # fmt: skip
def test_submit_refuses_what_cannot_work_on_a_cluster_with_one_line(capsys, argv, field):
    from sweeps.cli import main

    assert main(["sweep", "submit", QUICKSTART, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bvae sweep: error: {field}"), err


def test_a_spec_store_shadowing_mlflow_tracking_uri_says_to_pass_it(capsys, monkeypatch):
    """The dev stack exports MLFLOW_TRACKING_URI; the quickstart spec names its own sqlite store, which wins."""
    from sweeps.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert main(["sweep", "submit", QUICKSTART, "--set", "storage.path=s3://bucket/sweeps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("got 'sqlite:///mlflow.db' from the spec, which wins over "
                                             "$MLFLOW_TRACKING_URI (http://127.0.0.1:9): pass --tracking-uri "
                                             '"$MLFLOW_TRACKING_URI"'), err


def test_submission_ids_follow_the_sweep():
    from sweeps.jobs import submission_id

    a = submission_id("quickstart", "s3://b/sweeps/quickstart", 1)
    assert a == submission_id("quickstart", "s3://b/sweeps/quickstart", 1)  # the same sweep: the same job
    assert a != submission_id("quickstart", "s3://other/sweeps/quickstart", 1)  # same name, another sweep
    assert submission_id("quickstart", "s3://b/sweeps/quickstart", 2) == f"{a}-2"  # the next attempt resumes it


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A web server on 127.0.0.1 that answers 404 and records every path asked for."""

    asked: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).asked.append(self.path)
        self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("variable", ["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"])
@pytest.mark.parametrize("verb", ["submit", "status"])
def test_an_explicit_address_wins_over_the_environment(capsys, monkeypatch, variable, verb):
    """Ray's client lets $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS replace the address it is given; the dev stack
    exports the first, so a user's `--address` of a real cluster would have gone to the dev stack."""
    from sweeps.cli import main

    _Recorder.asked = []
    elsewhere = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(variable, f"http://127.0.0.1:{elsewhere.server_port}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        args = ([QUICKSTART, "--set", "storage.path=s3://bucket/sweeps", "--tracking-uri", "http://127.0.0.1:9"]
                if verb == "submit" else ["quickstart"])  # fmt: skip
        assert main(["sweep", verb, *args, "--address", f"http://127.0.0.1:{dead}"]) == 2
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bvae sweep: error: --address: no Ray Jobs API answers at "
                                               f"http://127.0.0.1:{dead} "), err  # fmt: skip
    assert _Recorder.asked == []  # the environment's address was never asked
    assert os.environ[variable] == f"http://127.0.0.1:{elsewhere.server_port}"  # and is left as it was


def test_set_needs_the_spec_file_for_status_logs_and_stop(capsys):
    from sweeps.cli import main

    for verb in ("status", "logs", "stop"):
        assert main(["sweep", verb, "quickstart", "--set", "storage.path=s3://b/sweeps"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bvae sweep: error: --set: applies to a spec file"), err
    # with the spec file, a --set mistake is named before any cluster is asked
    assert main(["sweep", "status", QUICKSTART, "--set", "search.trails=3", "--address", "http://127.0.0.1:9"]) == 2
    assert "search.trails: unknown key" in capsys.readouterr().err


def test_a_failed_jobs_status_line_shows_the_drivers_error():
    from ray.job_submission import JobDetails, JobStatus, JobType

    from sweeps.jobs import job_message

    logs = "bvae job driver: sweep run bvae_job_spec.yaml\n" + "x\n" * 50 + (
        "bvae sweep: error: storage.path: cannot write to s3://nosuchbucket/sweeps (NoSuchBucket)\n")
    failed = JobDetails(type=JobType.SUBMISSION, entrypoint="x", status=JobStatus.FAILED, driver_exit_code=2,
                        message=f"Job entrypoint command failed with exit code 2, last available logs (truncated to "
                                f"20,000 chars):\n{logs}")  # fmt: skip
    assert job_message(failed) == ("exit code 2: bvae sweep: error: storage.path: cannot write to "
                                   "s3://nosuchbucket/sweeps (NoSuchBucket)")  # fmt: skip
    stopped = JobDetails(type=JobType.SUBMISSION, entrypoint="x", status=JobStatus.STOPPED, message="Job was stopped.")
    assert job_message(stopped) == "Job was stopped."
    long = JobDetails(type=JobType.SUBMISSION, entrypoint="x", status=JobStatus.FAILED, driver_exit_code=1,
                      message="Job entrypoint command failed with exit code 1, …:\n" + "e" * 500)  # fmt: skip
    assert len(job_message(long)) == 160 and job_message(long).endswith("…")


def test_a_job_whose_trials_errored_says_so_and_how_to_continue_in_its_status_line():
    """The driver's last line joined the cluster's hint to the local wording: "…: the next attempt resumes it trains
    it from its last checkpoint"; the status line must start with what happened."""
    from ray.job_submission import JobDetails, JobStatus, JobType

    from sweeps.cli import errored_line
    from sweeps.jobs import continue_hint, job_message

    last = errored_line(1, continue_hint("qs3"))
    assert last == ("bvae sweep: 1 trial errored (its run's bvae.reason tag says why); train it again from its last "
                    "checkpoint with: bvae sweep submit SPEC (the spec of sweep 'qs3', with the --set values it was "
                    "submitted with)")  # fmt: skip
    failed = JobDetails(type=JobType.SUBMISSION, entrypoint="x", status=JobStatus.FAILED, driver_exit_code=1,
                        message=f"Job entrypoint command failed with exit code 1, …:\nprogress\n{last}\n")  # fmt: skip
    assert job_message(failed).startswith("exit code 1: bvae sweep: 1 trial errored (its run's bvae.reason tag says "
                                          "why); train it again")  # fmt: skip
