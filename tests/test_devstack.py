"""``python -m infra.devstack``: a port already taken, a --dir that is a file, Ctrl+C during ``up``. Real servers
on 127.0.0.1, started and stopped here by their process ids (the full stack under jobs: test_cluster_e2e.py)."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVSTACK = [sys.executable, "-m", "infra.devstack"]


def _devstack(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DEVSTACK, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("option", ["--mlflow-port", "--s3-port"])
def test_a_port_that_is_taken_is_refused_before_anything_starts(tmp_path, option):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = _devstack("up", "--dir", str(tmp_path / "stack"), option, str(port))
    assert up.returncode == 2, up.stderr
    assert up.stderr.strip() == (f"devstack: error: {option}: port {port} on 127.0.0.1 is taken (Address already in "
                                 f"use); choose another, or leave {option} out for a free one")  # fmt: skip
    assert up.stdout == ""  # no exports of a server that is not ours
    assert not list((tmp_path / "stack").glob("*.pid")) if (tmp_path / "stack").exists() else True


def test_a_dir_that_is_a_file_is_one_line():
    for command in ("up", "status", "down"):
        result = _devstack(command, "--dir", str(ROOT / "README.md"))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (command, result.stderr)
        assert "--dir:" in result.stderr and "is a file" in result.stderr


def _live_members(groups: set[int]) -> list[str]:
    """Processes of the process groups ``groups`` that are not zombies (this machine's init may reap late)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = text.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) in groups and state != "Z":
            live.append(text.split(")", 1)[0] + ")")
    return live


def _bvr_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("bvr*")}


@pytest.mark.slow
def test_ctrl_c_during_up_stops_what_had_started(tmp_path):
    stack = tmp_path / "stack"
    before = _bvr_dirs()
    proc = subprocess.Popen([*DEVSTACK, "up", "--ray", "--dir", str(stack)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (stack / "ray.pid").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (stack / "ray.pid").exists(), "the Ray head was never started"
        pids = {p.stem: int(p.read_text().split()[0]) for p in stack.glob("*.pid")}
        proc.send_signal(signal.SIGINT)  # mid-start: Ray's dashboard not yet answering
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run([*DEVSTACK, "down", "--dir", str(stack)], cwd=ROOT, timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("devstack: interrupted; what `up` had started is stopped")
    assert out == ""
    deadline = time.monotonic() + 10
    while _live_members(set(pids.values())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_members(set(pids.values())), pids  # every process group it started is gone
    assert not list(stack.glob("*.pid")) and not (stack / "state.json").exists()
    assert _bvr_dirs() <= before  # Ray's temp folder removed too


@pytest.mark.slow
def test_a_worker_node_joins_the_head_on_loopback_and_down_stops_it(tmp_path):
    """`up --ray --ray-cpus 0` then `worker`: a two-node cluster on this machine, as on the cluster (the head runs
    no trial), both nodes on 127.0.0.1; `down` stops the worker with the rest."""
    import json

    from infra.devstack import alive_nodes

    stack = tmp_path / "stack"
    before = _bvr_dirs()
    try:
        up = _devstack("up", "--ray", "--ray-cpus", "0", "--dir", str(stack), timeout=300)
        assert up.returncode == 0, up.stderr
        worker = _devstack("worker", "--cpus", "1", "--dir", str(stack), timeout=200)
        assert worker.returncode == 0 and "worker-1 joined with 1 CPU(s)" in worker.stderr, worker.stderr
        env = _devstack("env", "--dir", str(stack))  # prints the exports, stops nothing (it once ran `down`)
        assert env.returncode == 0 and env.stdout == up.stdout and "stopped" not in env.stderr, env.stderr
        state = json.loads((stack / "state.json").read_text())
        nodes = alive_nodes(state["ray"]["dashboard"])
        assert {n["node_ip"] for n in nodes} == {"127.0.0.1"}, nodes  # loopback only
        assert sorted((n["is_head_node"], n["resources_total"].get("CPU", 0)) for n in nodes) == [(False, 1), (True, 0)]
        pids = {p.stem: int(p.read_text().split()[0]) for p in stack.glob("*.pid")}
        assert set(pids) == {"s3", "mlflow", "ray", "worker-1"}
        assert _devstack("worker", "--cpus", "0", "--dir", str(stack)).returncode == 2
        # a job still running when the stack goes down is stopped through the Jobs API first: its driver gets the
        # signal and time to end (a sweep's driver saves its state and ends its runs KILLED)
        from ray.job_submission import JobSubmissionClient

        marker = tmp_path / "job-ended-cleanly"
        entrypoint = (f"python -c \"import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: "
                      f"(pathlib.Path('{marker}').write_text('ok'), sys.exit(0))); print('up', flush=True); "
                      f"time.sleep(600)\"")  # fmt: skip
        client = JobSubmissionClient(state["ray"]["dashboard"])
        job_id = client.submit_job(entrypoint=entrypoint)
        deadline = time.monotonic() + 60
        while "up" not in client.get_job_logs(job_id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "up" in client.get_job_logs(job_id), client.get_job_status(job_id)
    finally:
        down = _devstack("down", "--dir", str(stack), timeout=200)
    assert down.returncode == 0 and f"stopping Ray job(s) {job_id}" in down.stderr, down.stderr
    assert marker.read_text() == "ok"
    assert down.stderr.strip().splitlines()[-1].startswith("stopped worker-1, ray, mlflow, s3"), down.stderr
    deadline = time.monotonic() + 10
    while _live_members(set(pids.values())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_members(set(pids.values())), pids
    assert _bvr_dirs() <= before  # the head's and the worker's temp folders
    assert _devstack("worker", "--dir", str(stack)).returncode == 2  # no stack: one line, exit 2
    no_stack = _devstack("env", "--dir", str(stack))
    assert no_stack.returncode == 2 and no_stack.stdout == "" and "no stack runs from" in no_stack.stderr
