"""Start and stop the real servers the end-to-end tests talk to, all on 127.0.0.1 (docs/operations.md "Servers, as started
here"): moto's S3-compatible server and an MLflow tracking server whose artifacts live in a moto bucket.

Each server runs in a session of its own (``start_new_session=True``), so its process group id is its pid: ``stop()``
sends SIGTERM to that group (the server and the children it started, nothing else), waits, then SIGKILLs whatever is
left. Output goes to ``<tmp>/<name>.log``; a server that does not come up raises with the tail of its log, and
:func:`logs_on_error` prints the tails when a test using the servers fails.

Usable as plain helpers or from pytest fixtures::

    s3 = start_moto(tmp)
    request.addfinalizer(s3.stop)
    create_bucket(s3.url, "artifacts")
    tracking = start_mlflow(tmp / "mlflow.db", "s3://artifacts/mlflow", s3.url, timeout=None)
    request.addfinalizer(tracking.stop)
    ...  # something else meanwhile
    tracking.wait_ready()
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# ``ray start`` for a node that joins a cluster on 127.0.0.1 (``python -c JOIN_ON_LOOPBACK start …``), as the dev
# stack's ``worker`` command starts one.
from infra.devstack import JOIN_ON_LOOPBACK as _JOIN_ON_LOOPBACK
from infra.devstack import alive_nodes  # noqa: F401 - the ALIVE nodes of a cluster, for the tests too

#: No calls home and no cloud metadata probes from the servers or from the clients in this process (docs/operations.md).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}

_BIN = Path(sys.executable).parent  # moto_server and mlflow come with the test's own environment


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the caller retries if it is taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server process started by :func:`_spawn`; ``pid`` is also its process group id."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    probe: str = "/"  # a path that answers 2xx once the server is up
    leader_first: bool = False  # stop: SIGTERM the leader alone first (it shuts its children down), then the group
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 4000, noise: tuple[str, ...] = ()) -> str:
        """The last ``chars`` characters of the log, without the lines that contain any of ``noise``."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        if noise:
            text = "".join(line for line in text.splitlines(keepends=True) if not any(n in line for n in noise))
        return text[-chars:]

    def wait_ready(self, timeout: float = 90.0) -> Server:
        """Return once ``GET url + probe`` answers 2xx; stop the server and raise :class:`ServerFailed` if it exits
        first or does not answer within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerFailed(self, f"exited with {self.proc.returncode} before answering")
            if _answers(self.url + self.probe) is not None:
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerFailed(self, f"did not answer {self.probe} within {timeout:.0f} s")

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # the id was reused by someone else's process: not ours to signal
            return False
        return True

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's own process group, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None or self._group_alive():
            if self.leader_first and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout / 2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not self._group_alive():
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 even where *_PROXY is set


def _answers(url: str, timeout: float = 2.0) -> str | None:
    """The body of a GET on ``url`` when it answers 2xx, else None."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _spawn(name: str, argv: list[str], log_path: Path, env: dict[str, str], url: str, probe: str) -> Server:
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=log_path.parent, start_new_session=True)  # fmt: skip
    finally:
        log.close()  # the child holds its own copy
    return Server(name, url, proc, log_path, probe)


class ServerFailed(RuntimeError):
    def __init__(self, server: Server, why: str):
        self.server = server
        super().__init__(f"{server.name} ({' '.join(server.proc.args)}) {why}; log {server.log_path}:\n"
                         f"{server.log_tail()}")  # fmt: skip


def _start(name: str, make_argv, tmp: Path, env: dict[str, str], probe: str, timeout: float | None,
           attempts: int = 3) -> Server:  # fmt: skip
    """Start on a free port and, unless ``timeout`` is None, wait until it answers; try another port if this one was
    taken between :func:`free_port` and the bind. With ``timeout=None`` the caller calls ``wait_ready()`` later."""
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"{name}.log"
    for attempt in range(attempts):
        port = free_port()
        server = _spawn(name, make_argv(port), log_path, env, f"http://127.0.0.1:{port}", probe)
        if timeout is None:
            return server
        try:
            return server.wait_ready(timeout)
        except ServerFailed as exc:
            taken = "address already in use" in exc.server.log_tail().lower()
            if not taken or attempt == attempts - 1:
                raise
            log_path.rename(tmp / f"{name}.port-{port}-taken.log")
    raise AssertionError("unreachable")


def server_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **QUIET_ENV, **extra}


def start_moto(tmp: Path, timeout: float | None = 30.0, check_keys: bool = False) -> Server:
    """moto's S3-compatible server on 127.0.0.1 (log: ``<tmp>/moto.log``). ``check_keys``: refuse every request whose
    access key moto does not know (as AWS does; by default moto accepts any key)."""
    env = server_env(INITIAL_NO_AUTH_ACTION_COUNT="0") if check_keys else server_env()
    return _start("moto", lambda port: [str(_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                  Path(tmp), env, "/moto-api/", timeout)  # fmt: skip


def create_bucket(endpoint: str, name: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=QUIET_ENV["AWS_DEFAULT_REGION"],
                      aws_access_key_id=QUIET_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=QUIET_ENV["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    s3.create_bucket(Bucket=name)


def start_mlflow(db_path: Path, artifacts_destination: str, s3_endpoint: str, timeout: float | None = 90.0,
                 port: int | None = None) -> Server:  # fmt: skip
    """``mlflow server`` on 127.0.0.1, one worker, no job-execution processes, a sqlite backend at ``db_path`` and
    artifacts proxied to ``artifacts_destination`` (``s3://bucket/prefix`` on the S3 server at ``s3_endpoint``).
    Its log goes beside the database (``mlflow.log``). It takes 6–30 s to answer (two Python processes import
    mlflow, the first migrates the database): pass ``timeout=None`` to do other work meanwhile, then ``wait_ready()``."""
    db_path = Path(db_path).resolve()

    def argv(port: int) -> list[str]:
        return [str(_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{db_path}", "--artifacts-destination", artifacts_destination]  # fmt: skip

    env = server_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_S3_ENDPOINT_URL=s3_endpoint)
    if port is not None:  # a fixed port: a server restarted where its clients expect it
        server = _spawn("mlflow", argv(port), db_path.parent / "mlflow.log", env, f"http://127.0.0.1:{port}", "/health")
        return server if timeout is None else server.wait_ready(timeout)
    return _start("mlflow", argv, db_path.parent, env, "/health", timeout)


@contextlib.contextmanager
def logs_on_error(*servers: Server, chars: int = 3000):
    """Print each server's log tail (shown by pytest under "Captured stdout") when the block raises."""
    try:
        yield
    except BaseException:
        for server in servers:
            print(f"----- {server.name} (pid {server.pid}, {server.url}) log {server.log_path} -----")
            print(server.log_tail(chars, noise=("/static-files/",)))  # the UI's own JS and CSS: hundreds of lines
        raise


# ---------------------------------------------------------------- Ray nodes (a multi-node cluster on one host)
#: Every Ray process here and every client: loopback only, no token files, a 1 s drain on stop.
#: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps a node (and every process it starts) on 127.0.0.1 — with it unset,
#: Ray rewrites 127.0.0.1, even in --node-ip-address and --address, to the machine's routable address — but then
#: `ray start --address` refuses to join a cluster; see `_JOIN_ON_LOOPBACK`.
RAY_NODE_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "1",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # fmt: skip

def ray_temp_dir() -> Path:
    """A short temp dir for a Ray cluster: its unix sockets live under it (107-byte path limit)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="bvr", dir="/tmp"))


@dataclass
class RayNode:
    """A node started with ``ray start --block`` in a session of its own: ``server.stop()`` ends that node only."""

    server: Server
    gcs_address: str
    dashboard_url: str | None = None
    temp_dir: Path | None = None  # removed on stop: this node's own sessions, sockets and runtime_env files

    @property
    def pid(self) -> int:
        return self.server.pid

    def stop(self) -> None:
        self.server.stop(timeout=20)
        if self.temp_dir is not None:
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def raylet_pid(self) -> int:
        """The pid of this node's raylet (a child of its ``ray start``), read from /proc."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                text = stat.read_text()
                name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
                if name == "raylet" and int(rest[1]) == self.pid:
                    return int(stat.parent.name)
        raise LookupError(f"no raylet under ray start pid {self.pid}")


def _ray_argv(*args: str, join: bool = False) -> list[str]:
    ray = [sys.executable, "-c", _JOIN_ON_LOOPBACK] if join else [str(_BIN / "ray")]
    return [*ray, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args]  # fmt: skip


def start_ray_head(tmp: Path, temp_dir: Path, *, num_cpus: int = 0, env: dict[str, str] | None = None,
                   timeout: float = 150.0) -> RayNode:  # fmt: skip
    """``ray start --head`` on 127.0.0.1 with its dashboard (Jobs API) on a free port; ``num_cpus=0`` as on the
    cluster: no trial lands on the head. Returns when the Jobs API answers."""
    port, dash = free_port(), free_port()
    argv = _ray_argv("--head", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
                     f"--ray-client-server-port={free_port()}")  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{dash}"
    server = _spawn("ray-head", argv, tmp / "ray-head.log", server_env(**{**RAY_NODE_ENV, **(env or {})}), url,
                    "/api/version")  # fmt: skip
    server.leader_first = True
    node = RayNode(server, f"127.0.0.1:{port}", url)
    server.wait_ready(timeout)
    return node


def start_ray_worker(tmp: Path, head: RayNode, *, num_cpus: int = 2, name: str = "ray-worker",
                     env: dict[str, str] | None = None, timeout: float = 120.0) -> RayNode:  # fmt: skip
    """``ray start --address`` on 127.0.0.1; returns when the head lists one more ALIVE node. The node gets a temp
    dir of its own: nodes that share one also share their runtime_env folders, and a worker re-extracting a job's
    working_dir there deletes the folder the job's driver (on the head) runs in."""
    before = {n["node_id"] for n in alive_nodes(head.dashboard_url) if not n.get("is_head_node")}
    temp_dir = ray_temp_dir()
    argv = _ray_argv(f"--address={head.gcs_address}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                     f"--temp-dir={temp_dir}", join=True)  # fmt: skip
    server = _spawn(name, argv, Path(tmp) / f"{name}.log", server_env(**{**RAY_NODE_ENV, **(env or {})}),
                    head.dashboard_url, "/api/version")  # fmt: skip
    server.leader_first = True
    node = RayNode(server, head.gcs_address, temp_dir=temp_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            node.stop()
            raise ServerFailed(server, f"exited with {server.proc.returncode} before joining")
        if {n["node_id"] for n in alive_nodes(head.dashboard_url) if not n.get("is_head_node")} - before:
            with contextlib.suppress(LookupError):
                node.raylet_pid()
                return node
        time.sleep(0.5)
    node.stop()
    raise ServerFailed(server, f"did not join {head.gcs_address} within {timeout:.0f} s")


class FlakyProxy(http.server.ThreadingHTTPServer):
    """An HTTP proxy on 127.0.0.1 in front of a real server (MLflow, moto S3) that answers ``status`` instead of
    forwarding whenever ``should_fail(method, path)`` says so — a server that is briefly broken, on demand. Serves
    from a daemon thread once made; ``shutdown()`` stops it."""

    def __init__(self, upstream: str, should_fail, status: int = 500):
        self.upstream, self.should_fail, self.status, self.refused = upstream.rstrip("/"), should_fail, status, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = bytearray()
        while True:  # HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), as the S3 clients send uploads
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailer fields
                    pass
                return bytes(body)
            body += self.rfile.read(size)
            self.rfile.readline()

    def _forward(self) -> None:
        body = self._body()
        with self.server.lock:
            fail = self.server.should_fail(self.command, self.path)
            self.server.refused += int(bool(fail))
        if fail:
            self.send_response(self.server.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        send = body if body or self.command in ("PUT", "POST", "PATCH") else None  # an empty PUT still says 0 bytes
        request = urllib.request.Request(self.server.upstream + self.path, data=send, method=self.command,
                                         headers={k: v for k, v in self.headers.items()
                                                  if k.lower() not in ("host", "expect", "transfer-encoding",
                                                                       "content-length")})  # fmt: skip
        try:
            with _DIRECT.open(request, timeout=60) as response:
                status, headers, payload = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, payload = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        head = self.command == "HEAD"  # a HEAD answer says the size of what a GET would send
        self.send_header("Content-Length", headers.get("Content-Length", "0") if head else str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward
