"""Real servers for the cluster tests: PostgreSQL, an MLflow tracking server on it, Ray nodes.

Each helper starts real processes and returns an object whose ``stop()`` ends them. Nothing
here is mocked; where PostgreSQL cannot be installed the caller skips with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# ---- PostgreSQL -------------------------------------------------------------------------
@dataclass
class Postgres:
    version: str
    started_here: bool
    port: int = 5432
    databases: list[str] = field(default_factory=list)

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = _run(["runuser", "-u", "postgres", "--", "psql", "-p", str(self.port), "-d", db, "-v", "ON_ERROR_STOP=1",
                    "-tAc", sql])
        if out.returncode:
            raise RuntimeError(f"psql failed: {sql}\n{out.stderr}")
        return out.stdout.strip()

    def create_database(self, name: str, user: str = "regtune_test", password: str = "regtune-test") -> str:
        """A fresh database owned by ``user``; returns its SQLAlchemy URL."""
        self.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN "
                  f"CREATE ROLE {user} LOGIN PASSWORD '{password}'; END IF; END $$;")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {name} OWNER {user}")
        self.databases.append(name)
        return f"postgresql+psycopg://{user}:{password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        for name in self.databases:
            try:
                self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except RuntimeError:
                pass
        if self.started_here:
            _run(["pg_ctlcluster", self.version, "main", "stop"])


def start_postgres() -> Postgres | str:
    """Install (Debian package) and start PostgreSQL; returns it, or why it cannot be had."""
    if shutil.which("pg_ctlcluster") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return "PostgreSQL is not installed and this user cannot apt-get install it (needs root on Debian/Ubuntu)"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        out = _run(["apt-get", "install", "-y", "-q", "postgresql"], timeout=900, env=env)
        if out.returncode:
            _run(["apt-get", "update", "-q"], timeout=600, env=env)
            out = _run(["apt-get", "install", "-y", "-q", "postgresql"], timeout=900, env=env)
        if out.returncode or shutil.which("pg_ctlcluster") is None:
            return f"apt-get install postgresql failed: {out.stderr.strip()[-500:]}"
    if os.geteuid() != 0:
        return "PostgreSQL is installed but the tests need root to start it and create a database (runuser -u postgres)"
    versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: float(v) if v.replace(".", "").isdigit() else 0)
    if not versions:
        return "no PostgreSQL server version under /usr/lib/postgresql"
    ver = versions[-1]
    if not Path(f"/etc/postgresql/{ver}/main").is_dir():
        out = _run(["pg_createcluster", ver, "main"])
        if out.returncode:
            return f"pg_createcluster {ver} main failed: {out.stderr.strip()[-500:]}"
    status = _run(["pg_ctlcluster", ver, "main", "status"])
    started = False
    if status.returncode != 0:
        out = _run(["pg_ctlcluster", ver, "main", "start"])
        if out.returncode:
            return f"pg_ctlcluster {ver} main start failed: {out.stderr.strip()[-500:]}"
        started = True
    conf = _run(["runuser", "-u", "postgres", "--", "psql", "-tAc", "SHOW port"])
    port = int(conf.stdout.strip() or 5432)
    for _ in range(60):
        if _run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0:
            return Postgres(ver, started, port)
        time.sleep(0.5)
    return "PostgreSQL did not accept connections within 30 s"


# ---- MLflow tracking server -------------------------------------------------------------
@dataclass
class MlflowServer:
    proc: subprocess.Popen
    uri: str
    artifacts: Path
    log: Path

    def stop(self) -> None:
        stop_group(self.proc)


def start_mlflow_server(backend_uri: str, artifacts: Path, log: Path, timeout: float = 120) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts (--serve-artifacts) in ``artifacts``."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return MlflowServer(proc, uri, artifacts, log)
        except OSError:
            pass
        time.sleep(0.5)
    stop_group(proc)
    raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


# ---- Ray nodes ------------------------------------------------------------------------------
@dataclass
class RayCluster:
    """A head and worker nodes started with ``ray start --block`` (each its own process group)."""

    address: str
    env: dict[str, str]
    nodes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for p in reversed(self.nodes):
            stop_group(p, grace=5)
        # `ray start --head` recorded this cluster as the machine's default; forget it, as `ray stop` would
        current = Path("/tmp/ray/ray_current_cluster")
        port = self.address.rsplit(":", 1)[1]
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()

    def alive_nodes(self) -> list[dict]:
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'id': n['NodeID'], 'res': n['Resources']} for n in ray.nodes() if n['Alive']]))") % self.address
        out = _run([sys.executable, "-c", code], timeout=120, env=self.env)
        if out.returncode:
            raise RuntimeError(f"cannot reach the Ray cluster at {self.address}: {out.stderr[-2000:]}")
        import json

        return json.loads(out.stdout.strip().splitlines()[-1])


def start_ray_cluster(workdir: Path, n_workers: int = 1, cpus: int = 1, gpus: int = 1, timeout: float = 120) -> RayCluster:
    """A real multi-node Ray cluster on this machine: ``ray start --head`` + ``ray start --address``.

    Token authentication stays on (Ray's default): every process of the cluster and its
    drivers gets the same RAY_AUTH_TOKEN. GPUs are logical resources (``--num-gpus``).
    """
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    address = f"127.0.0.1:{port}"
    cluster = RayCluster(address, env)
    common = ["--block", f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--object-store-memory=200000000",
              "--disable-usage-stats"]
    specs = [["--head", f"--port={port}", "--include-dashboard=false"]] + [[f"--address={address}"]] * n_workers
    for i, spec in enumerate(specs):
        log = workdir / f"ray-node{i}.log"
        fh = open(log, "w")
        cluster.nodes.append(subprocess.Popen([str(BIN / "ray"), "start", *spec, *common], stdout=fh,
                                              stderr=subprocess.STDOUT, env=env, start_new_session=True))
        cluster.logs.append(log)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text() and time.monotonic() < deadline:
            if cluster.nodes[-1].poll() is not None:
                cluster.stop()
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
    deadline = time.monotonic() + timeout
    while len(cluster.alive_nodes()) < 1 + n_workers:
        if time.monotonic() > deadline:
            cluster.stop()
            raise RuntimeError(f"the Ray cluster did not reach {1 + n_workers} nodes in {timeout:.0f} s")
        time.sleep(1)
    return cluster
