"""A development stack on this machine, started and stopped with one command:

- an S3-compatible server (``moto_server``) with a bucket,
- an MLflow tracking server (SQL backend, ``--artifacts-destination s3://BUCKET/mlflow``, artifacts proxied: clients
  need no S3 credentials),
- optionally (``--ray``) a Ray head with its dashboard / Jobs API, and (``worker``) Ray worker nodes joining it.

Everything binds 127.0.0.1 unless ``--host`` says otherwise; ports are free ones unless given. ``up`` prints the
environment to export (``env`` prints it again); ``down`` stops only the processes ``up`` started (their pids are in
``DIR/*.pid``, each the leader of a process group of its own). Logs: ``DIR/*.log``.

    python -m infra.devstack up --ray          # from a clone; also: python infra/devstack.py up
    python -m infra.devstack worker --cpus 2   # one more node (a head started with --ray-cpus 0 runs no trial)
    eval "$(python -m infra.devstack env)"
    python -m infra.devstack down

Needs the project's requirements (``moto[server]``, ``mlflow``, ``boto3``, ``ray[default]``) in this Python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_DIR = ".devstack"
#: Dummy credentials for the local S3-compatible server (it accepts any) and no cloud metadata probes.
S3_CLIENT_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: No calls home from anything started here.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local servers even where *_PROXY is set


class StackError(RuntimeError):
    """Something in the stack could not be started or stopped; the message says what and where its log is."""


class StackUsageError(StackError):
    """The command asked for something that cannot be (a port in use, a folder that is a file): exit 2."""


# ---------------------------------------------------------------- helpers
def _tool(name: str) -> str:
    """An executable of this Python's environment (the venv's ``bin/``), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name}: not found beside {sys.executable} nor on PATH; pip install -r requirements.txt")
    return found


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host if host != "0.0.0.0" else "127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port_free(option: str, host: str, port: int) -> None:
    """A port the user chose must be free: a server already there would answer in place of the one started."""
    with socket.socket() as sock:
        try:
            sock.bind((host if host != "0.0.0.0" else "127.0.0.1", port))
        except OSError as e:
            raise StackUsageError(f"{option}: port {port} on {host} is taken ({e.strerror}); choose another, or leave "
                                  f"{option} out for a free one") from None  # fmt: skip


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with _DIRECT.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process with a reused pid
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Stack:
    """The stack's state folder: pid files, logs, the database, ``state.json`` (what ``env`` prints)."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.dir = Path(folder).expanduser().resolve()

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Start ``argv`` in a session of its own (its pid is its process group id); record its pid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env}, cwd=self.dir, start_new_session=True)  # fmt: skip
        (self.dir / f"{name}.pid").write_text(f"{proc.pid}\n{argv[0]}\n")
        return proc.pid

    def wait(self, name: str, pid: int, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid) or "State:\tZ" in _status(pid):
                raise StackError(f"{name} exited before answering {url}; log {self.dir / (name + '.log')}:\n"
                                 f"{self.tail(name)}")  # fmt: skip
            if _answers(url):
                return
            time.sleep(0.3)
        raise StackError(f"{name} did not answer {url} within {timeout:.0f} s; log {self.dir / (name + '.log')}:\n"
                         f"{self.tail(name)}")  # fmt: skip

    def tail(self, name: str, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / f"{name}.log").read_text(errors="replace")[-chars:]
        return ""

    def stop(self, name: str, leader_first: bool = False, timeout: float = 20.0) -> bool:
        """Stop the process group recorded in ``NAME.pid`` if it is still the one we started. True if it ran."""
        pid_file = self.dir / f"{name}.pid"
        try:
            pid_text, program = (pid_file.read_text().splitlines() + [""])[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            return False
        ours = _alive(pid) and (not program or Path(program).name in _cmdline(pid))
        ran = False
        if ours or _group_alive(pid):
            ran = True
            if leader_first and ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # `ray start --block` shuts its own processes down
                _wait_gone(lambda: _alive(pid) and "State:\tZ" not in _status(pid), timeout / 2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            if not _wait_gone(lambda: _group_alive(pid), timeout):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                _wait_gone(lambda: _group_alive(pid), 5)
        pid_file.unlink(missing_ok=True)
        return ran


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""


def _wait_gone(alive, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return True
        time.sleep(0.2)
    return not alive()


# ---------------------------------------------------------------- up / down / env
def up(args: argparse.Namespace) -> dict:
    """Start the stack; return its state (URLs, pids, the environment to export)."""
    stack = Stack(args.dir)
    if any(stack.dir.glob("*.pid")):
        raise StackUsageError(f"--dir: a stack already runs from {stack.dir} (pid files there); "
                              f"`down --dir {stack.dir}` first")  # fmt: skip
    host, client = args.host, _client_host(args.host)
    for option, port in (("--s3-port", args.s3_port), ("--mlflow-port", args.mlflow_port),
                         ("--ray-port", args.ray_port if args.ray else 0),
                         ("--dashboard-port", args.dashboard_port if args.ray else 0)):  # fmt: skip
        if port:
            check_port_free(option, host, port)
    s3_port = args.s3_port or free_port(host)
    mlflow_port = args.mlflow_port or free_port(host)
    s3_url = f"http://{client}:{s3_port}"
    mlflow_url = f"http://{client}:{mlflow_port}"
    state: dict = {"dir": str(stack.dir), "host": host, "s3": s3_url, "mlflow": mlflow_url, "bucket": args.bucket}
    try:
        pid = stack.spawn("s3", [_tool("moto_server"), "-H", host, "-p", str(s3_port)], {**QUIET_ENV, **S3_CLIENT_ENV})
        stack.wait("s3", pid, f"{s3_url}/moto-api/", 60)
        _create_bucket(s3_url, args.bucket)
        backend = args.backend_store_uri or f"sqlite:///{stack.dir / 'mlflow.db'}"
        mlflow_env = {**QUIET_ENV, **S3_CLIENT_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_url,
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fmt: skip
        argv = [_tool("mlflow"), "server", "--host", host, "--port", str(mlflow_port), "--workers", "1",
                "--backend-store-uri", backend, "--artifacts-destination", f"s3://{args.bucket}/mlflow"]  # fmt: skip
        pid = stack.spawn("mlflow", argv, mlflow_env)
        state["env"] = environment(state)
        if args.ray:
            state.update(_start_ray(stack, args, state))
            state["env"] = environment(state)
        stack.wait("mlflow", pid, f"{mlflow_url}/health", 180)
    except BaseException:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut the clean-up short
        try:
            down_stack(stack, timeout=5.0, job_grace=0)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    stack.save(state)
    return state


def _start_ray(stack: Stack, args: argparse.Namespace, state: dict) -> dict:
    host, client = args.host, _client_host(args.host)
    port = args.ray_port or free_port(host)
    dash = args.dashboard_port or free_port(host)
    temp_dir = Path(tempfile.mkdtemp(prefix="bvr", dir="/tmp"))  # short: Ray's unix sockets live under it
    stack.save({**state, "ray": {"temp_dir": str(temp_dir)}})  # so that a failed or interrupted `up` removes it
    argv = [_tool("ray"), "start", "--head", "--block", "--disable-usage-stats", f"--port={port}",
            f"--dashboard-host={host}", f"--dashboard-port={dash}", "--include-dashboard=true",
            f"--ray-client-server-port={free_port(host)}", f"--dashboard-agent-listen-port={free_port(host)}",
            f"--temp-dir={temp_dir}", "--num-gpus=0"]  # fmt: skip
    if args.ray_cpus is not None:
        argv.append(f"--num-cpus={args.ray_cpus}")
    env = {**QUIET_ENV, **state["env"], "RAY_AUTH_MODE": args.ray_auth_mode,
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1"}  # fmt: skip
    if host == "127.0.0.1":
        argv.append("--node-ip-address=127.0.0.1")
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps the head and its processes on loopback
    pid = stack.spawn("ray", argv, env)
    dashboard = f"http://{client}:{dash}"
    stack.wait("ray", pid, f"{dashboard}/api/version", 180)
    return {"ray": {"gcs_address": f"{client}:{port}", "dashboard": dashboard, "temp_dir": str(temp_dir),
                    "auth_mode": args.ray_auth_mode}}  # fmt: skip


#: ``ray start`` for a node joining a head on 127.0.0.1 of the same machine, run as ``python -c JOIN_ON_LOOPBACK
#: start …``. Plain ``ray start --address`` cannot: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps a node on
#: loopback) it refuses to join any cluster, and without it Ray rewrites 127.0.0.1 to the machine's routable address.
#: In this one process (not in the raylet, agents and workers it starts) joining is allowed and loopback addresses are
#: kept as they are — Ray internals (``ray._private``), checked by tests/test_devstack.py against the pinned Ray.
JOIN_ON_LOOPBACK = (
    "import sys; import ray._private.ray_constants as c, ray._private.services as s; "
    "c.ENABLE_RAY_CLUSTER = True; s.resolve_ip_for_localhost = lambda host: host; "
    "s.get_node_ip_address = lambda address=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def alive_nodes(dashboard: str) -> list[dict]:
    """The ALIVE nodes of a cluster (Ray's state API through its dashboard): node_id, node_ip, resources_total, …"""
    try:
        with _DIRECT.open(f"{dashboard}/api/v0/nodes?limit=100", timeout=10) as response:
            rows = json.loads(response.read())["data"]["result"]["result"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return []
    return [n for n in rows if n.get("state") == "ALIVE"]


def _worker_nodes(dashboard: str, timeout: float = 0.0) -> set[str]:
    """The ids of the cluster's ALIVE worker (non-head) nodes, once its state API lists the head (it may not yet,
    just after ``up``): waits up to ``timeout`` seconds for that; an empty set if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = alive_nodes(dashboard)
        if any(n.get("is_head_node") for n in nodes) or time.monotonic() >= deadline:
            return {n["node_id"] for n in nodes if not n.get("is_head_node")}
        time.sleep(0.5)


def add_worker(args: argparse.Namespace) -> dict:
    """Start one Ray worker node joining the stack's head (``--cpus`` CPUs, no GPU); return its entry of the state.
    Returns when the head lists it ALIVE; ``down`` stops it."""
    stack = Stack(args.dir)
    state = stack.state()
    if "ray" not in state or not (stack.dir / "ray.pid").exists():
        raise StackUsageError(f"--dir: no stack with a Ray head runs from {stack.dir}; start one with `up --ray`")
    head = state["ray"]
    if head.get("auth_mode", "disabled") != "disabled":
        raise StackUsageError("worker: the head uses Ray's token authentication; start the stack without "
                              "--ray-auth-mode token to add worker nodes")  # fmt: skip
    workers = state.setdefault("workers", [])
    name = f"worker-{len(workers) + 1}"
    temp_dir = Path(tempfile.mkdtemp(prefix="bvr", dir="/tmp"))  # its own: nodes sharing one share runtime_envs
    workers.append({"name": name, "cpus": args.cpus, "temp_dir": str(temp_dir)})
    stack.save(state)  # before it starts: `down` finds it whatever happens next
    host = state.get("host", "127.0.0.1")
    before = _worker_nodes(head["dashboard"], timeout=30)
    argv = [sys.executable, "-c", JOIN_ON_LOOPBACK, "start", "--block", "--disable-usage-stats",
            f"--address={head['gcs_address']}", f"--node-ip-address={_client_host(host)}", f"--num-cpus={args.cpus}",
            "--num-gpus=0", f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port(host)}",
            f"--metrics-export-port={free_port(host)}"]  # fmt: skip
    env = {**QUIET_ENV, **state["env"], "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # fmt: skip
    try:
        pid = stack.spawn(name, argv, env)
        deadline = time.monotonic() + 120
        while not _worker_nodes(head["dashboard"]) - before:
            if not _alive(pid) or "State:\tZ" in _status(pid):
                raise StackError(f"{name} exited before joining; log {stack.dir / (name + '.log')}:\n"
                                 f"{stack.tail(name)}")  # fmt: skip
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not join the head within 120 s; log {stack.dir / (name + '.log')}:\n"
                                 f"{stack.tail(name)}")  # fmt: skip
            time.sleep(0.5)
    except BaseException:  # failed or interrupted: leave nothing of it behind
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stack.stop(name, leader_first=True, timeout=5.0)
            shutil.rmtree(temp_dir, ignore_errors=True)
            state["workers"].pop()
            stack.save(state)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    return workers[-1]


def _create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=S3_CLIENT_ENV["AWS_DEFAULT_REGION"],
                      aws_access_key_id=S3_CLIENT_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CLIENT_ENV["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)


def environment(state: dict) -> dict[str, str]:
    """What a user (and every Ray process) exports to use the stack: S3 endpoint and keys, the tracking URI, the
    Jobs API address."""
    env = {"AWS_ENDPOINT_URL": state["s3"], **S3_CLIENT_ENV, "MLFLOW_TRACKING_URI": state["mlflow"],
           "BVAE_STORAGE": f"s3://{state['bucket']}/sweeps"}  # fmt: skip
    if "ray" in state:
        env["RAY_API_SERVER_ADDRESS"] = state["ray"]["dashboard"]
        env["RAY_AUTH_MODE"] = state["ray"]["auth_mode"]
    return env


#: Seconds ``down`` gives the Ray jobs still running to end cleanly (a sweep's driver saves its state and ends its
#: runs KILLED in MLflow) before it stops the servers under them.
JOB_STOP_GRACE_S = 60.0


def stop_live_jobs(dashboard: str, grace: float = JOB_STOP_GRACE_S) -> list[str]:
    """Ask the head's Jobs API to stop every PENDING or RUNNING job and wait up to ``grace`` seconds for them to
    end; returns their submission ids (none when the API does not answer)."""
    def jobs() -> list[dict]:
        try:
            with _DIRECT.open(f"{dashboard}/api/jobs/", timeout=10) as response:
                return [j for j in json.loads(response.read()) if j.get("status") in ("PENDING", "RUNNING")]
        except (urllib.error.URLError, OSError, ValueError):
            return []

    live = [j.get("submission_id") or j.get("job_id") for j in jobs()]
    for job_id in live:
        with contextlib.suppress(urllib.error.URLError, OSError):
            stop = urllib.request.Request(f"{dashboard}/api/jobs/{job_id}/stop", method="POST")
            _DIRECT.open(stop, timeout=10).close()
    if live:
        print(f"# stopping Ray job(s) {', '.join(live)} (up to {grace:.0f} s: their drivers save their state)",
              file=sys.stderr)  # fmt: skip
        _wait_gone(lambda: bool(jobs()), grace)
    return live


def down_stack(stack: Stack, timeout: float = 20.0, job_grace: float = JOB_STOP_GRACE_S) -> list[str]:
    """Stop what ``up`` started from this folder, each given ``timeout`` seconds to end before it is killed: the
    Ray jobs still running first (``job_grace`` seconds; a sweep's runs then end KILLED, not RUNNING), then the
    worker nodes and the head, then MLflow and S3, which the jobs talk to. Returns the names of what it stopped."""
    state = stack.state()
    if "ray" in state and state["ray"].get("dashboard") and job_grace > 0 and (stack.dir / "ray.pid").exists():
        stop_live_jobs(state["ray"]["dashboard"], job_grace)
    workers = [w["name"] for w in state.get("workers", [])]
    stopped = [name for name, leader in (*((w, True) for w in workers), ("ray", True), ("mlflow", False),
                                         ("s3", False))
               if stack.stop(name, leader_first=leader, timeout=timeout)]  # fmt: skip
    for temp_dir in [state.get("ray", {}).get("temp_dir"), *(w.get("temp_dir") for w in state.get("workers", []))]:
        if temp_dir and Path(temp_dir).name.startswith("bvr"):
            shutil.rmtree(temp_dir, ignore_errors=True)
    stack.state_file.unlink(missing_ok=True)
    return stopped


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.devstack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start S3 + MLflow (+ a Ray head with --ray); print the environment")
    p_up.add_argument("--host", default="127.0.0.1", help="address every server binds (default 127.0.0.1)")
    p_up.add_argument("--bucket", default="bvae", help="the bucket to create (default bvae)")
    p_up.add_argument("--s3-port", type=int, default=0, help="default: a free port")
    p_up.add_argument("--mlflow-port", type=int, default=0, help="default: a free port")
    p_up.add_argument("--backend-store-uri", help="MLflow's SQL backend (default sqlite:///DIR/mlflow.db), e.g. "
                                                  "postgresql://user:pw@host/mlflow")  # fmt: skip
    p_up.add_argument("--ray", action="store_true", help="also start a Ray head (dashboard and Jobs API)")
    p_up.add_argument("--ray-port", type=int, default=0, help="GCS port (default: a free port)")
    p_up.add_argument("--dashboard-port", type=int, default=0, help="dashboard / Jobs API port (default: free)")
    p_up.add_argument("--ray-cpus", type=int, help="CPUs the head offers trials (0 as on the cluster: add workers "
                                                   "with `worker`; default: all)")  # fmt: skip
    p_up.add_argument("--ray-auth-mode", default="disabled", choices=["disabled", "token"],
                      help="Ray's token authentication (clients need the same RAY_AUTH_MODE; default disabled)")
    p_worker = sub.add_parser("worker", help="add a Ray worker node on this machine to the stack's head (`up --ray`)")
    p_worker.add_argument("--cpus", type=int, default=1, help="CPUs it offers trials (default 1)")
    for p in (p_up, p_worker, *(sub.add_parser(n, help=h) for n, h in (
            ("env", "print the environment to export (eval \"$(python -m infra.devstack env)\")"),
            ("down", "stop what `up` started (by the pids it recorded)"),
            ("status", "what runs, where")))):  # fmt: skip
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"state folder: pids, logs, database (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    stack = Stack(args.dir)
    if stack.dir.exists() and not stack.dir.is_dir():
        print(f"devstack: error: --dir: {stack.dir} is a file; expected a folder (made if missing)", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            state = up(args)
            print(f"# dev stack up (state and logs in {stack.dir}); stop it with: python -m infra.devstack down "
                  f"--dir {shlex.quote(str(stack.dir))}", file=sys.stderr)  # fmt: skip
            print(f"# S3 {state['s3']} (bucket {state['bucket']}), MLflow {state['mlflow']}"
                  + (f", Ray {state['ray']['gcs_address']} (dashboard {state['ray']['dashboard']})" if "ray" in state
                     else ""), file=sys.stderr)  # fmt: skip
            print(_exports(state["env"]))
        elif args.command == "worker":
            if args.cpus < 1:
                raise StackUsageError(f"--cpus: expected at least 1, got {args.cpus}")
            worker = add_worker(args)
            print(f"# {worker['name']} joined with {worker['cpus']} CPU(s); `down` stops it with the stack",
                  file=sys.stderr)  # fmt: skip
            state = stack.state()
            if not state:
                print(f"devstack: error: --dir: no stack runs from {stack.dir}", file=sys.stderr)
                return 2
            print(_exports(state["env"]))
        elif args.command == "env":
            state = stack.state()
            if not state:
                print(f"devstack: error: --dir: no stack runs from {stack.dir} (start one with `up`)", file=sys.stderr)
                return 2
            print(_exports(state["env"]))
        elif args.command == "status":
            state = stack.state()
            running = {p.stem: _alive(int(p.read_text().split()[0])) for p in stack.dir.glob("*.pid")}
            print(json.dumps({"state": state, "running": running}, indent=2))
            return 0 if state and all(running.values()) else 1
        else:  # down
            stopped = down_stack(stack)
            print(f"stopped {', '.join(stopped) or 'nothing (no stack ran from ' + str(stack.dir) + ')'}",
                  file=sys.stderr)  # fmt: skip
    except StackError as e:
        print(f"devstack: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, StackUsageError) else 1
    except KeyboardInterrupt:
        print("devstack: interrupted" + (f"; what `{args.command}` had started is stopped"
                                         if args.command in ("up", "worker") else ""),
              file=sys.stderr)  # fmt: skip
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
