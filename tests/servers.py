"""Real servers started on loopback by the tests themselves: PostgreSQL (the Debian `postgresql` package: `initdb` +
`pg_ctl` into a temporary directory), an S3-compatible server (moto's server mode), and the session's local Ray with
the whole Serve app deployed once.

`.ci/run` installs PostgreSQL where it is missing; elsewhere a machine without it skips the PostgreSQL half of the
suites (CI fails instead, so a green CI always means both backends ran).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The directory of `initdb`/`pg_ctl`: on PATH, else Debian's versioned directory (newest first)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def missing(what: str) -> None:
    """Skip on a developer machine without `what`; fail in CI, where `.ci/run` must have installed it."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed; .ci/run installs it")
    pytest.skip(f"{what} is not installed (apt-get install postgresql)")


@dataclass
class Postgres:
    """A throw-away PostgreSQL server; `new_database()` gives each test its own empty database."""

    root: Path
    port: int
    bindir: Path
    user: str = "avatar"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _as_postgres(f"{self.bindir}/pg_ctl -D {self.root}/data -m fast -w stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres(command: str) -> None:
    """`initdb` refuses to run as root: as root, run as the `postgres` user (CI runs as root)."""
    argv = ["su", "postgres", "-s", "/bin/sh", "-c", command] if os.geteuid() == 0 else ["sh", "-c", command]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def start_postgres() -> Postgres:
    bindir = pg_bin()
    if bindir is None:
        missing("PostgreSQL (initdb)")
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))   # short: the socket path must stay under 107 bytes
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    _as_postgres(f"{bindir}/initdb -D {root}/data -A trust -U avatar -E UTF8 --no-sync >/dev/null && "
                 f"{bindir}/pg_ctl -D {root}/data -o '-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                 f"-c fsync=off -c max_connections=200' -l {root}/log -w start")
    return Postgres(root, port, bindir)


@dataclass
class S3Server:
    """moto's S3 server on loopback; `new_bucket()` gives a test its own bucket."""

    server: object
    endpoint: str   # host:port

    def new_bucket(self) -> str:
        import pyarrow.fs as pafs
        name = "t-" + secrets.token_hex(6)
        self.filesystem().create_dir(name)
        assert self.filesystem().get_file_info(name).type == pafs.FileType.Directory
        return name

    def uri(self, bucket: str, prefix: str = "") -> str:
        """An `s3://` URI with the endpoint override (credentials come from the AWS_* environment)."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def filesystem(self):
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region="us-east-1",
                                 access_key="testing", secret_key="testing", allow_bucket_creation=True)

    def stop(self) -> None:
        self.server.stop()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def start_s3() -> S3Server:
    import logging

    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
    os.environ.update(S3_ENV)   # what a pod gets from its Secret; pyarrow's AWS SDK reads it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return S3Server(server, f"{host}:{port}")


# ------------------------------------------------------------------------------ the session's local Ray and Serve app
# The environment of the session's Ray processes. Replicas and Serve's proxy read these once, at start-up, so they are
# set before Ray starts and hold for every module: the union of what the Serve, training and Ray Data modules need.
RAY_ENV = {
    "AVATAR_SIGNING_SECRET": "test-secret",
    "AVATAR_OPERATOR_KEY": "operator-secret",
    "AVATAR_WEBHOOK_ALLOW_PRIVATE": "true",        # test_jobs_service's webhook receiver listens on loopback
    "AVATAR_PROXY_HEADER_TIMEOUT_S": "2",          # test_hardening_service's slow clients
    "AVATAR_PROXY_BODY_IDLE_S": "2",
    "AVATAR_PROXY_BODY_TIMEOUT_S": "8",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",    # Train's 2 s controller poll would cost ~2 s per report
}
APP_VERSION = "tests"   # one code version for every deploy of the session: a changed user_config is a reconfigure


def forget_serve_handles() -> None:
    """Stop the routers of the Serve handles this process holds (`serve.run` returns one) before its Ray ends: each
    runs a thread that pushes metrics every few seconds, and after `ray.shutdown()` that thread's `ray.wait` would
    start a fresh local Ray in the test process (Ray's auto-init) or log 'owner is unknown' under the next one."""
    from ray.serve import context
    client = context._global_client
    if client is not None:
        client.shutdown_cached_handles()
    context._disconnect()


@dataclass
class LocalRay:
    """The session's one local Ray (RAY_NOTES: `address="local"`, a short temp dir, the session's own data dir)."""

    temp: Path
    data: Path
    saved_env: dict[str, str]

    def stop(self) -> None:
        """Ends the node and everything on it (no serve.shutdown() first: its graceful replica stops only add time)."""
        import ray
        forget_serve_handles()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(self.saved_env)
        for path in (self.temp, self.data):
            shutil.rmtree(path, ignore_errors=True)


def start_local_ray() -> LocalRay:
    """A local Ray for the session with RAY_ENV and a fresh AVATAR_DATA_DIR (AVATAR_* variables that earlier tests left
    in the environment are cleared first: Ray's processes inherit the driver's environment)."""
    import ray

    from service.launcher import init_local_ray
    if ray.is_initialized():
        raise RuntimeError("a Ray is already initialised in this process: the session's local Ray must be the only one")
    saved = dict(os.environ)
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))   # short: Unix socket paths must stay under 107 bytes
    data = Path(tempfile.mkdtemp(prefix="avatar-data-"))
    for key in [k for k in os.environ if k.startswith("AVATAR_")]:
        del os.environ[key]
    os.environ.update({**RAY_ENV, "AVATAR_DATA_DIR": str(data)})
    try:
        init_local_ray(num_cpus=2, temp_dir=str(temp))
    except BaseException:
        LocalRay(temp, data, saved).stop()
        raise
    return LocalRay(temp, data, saved)


@dataclass
class ServeApp:
    """The whole app (serve_config.yaml, CPU profile) deployed once on the session's Ray. Modules change it through
    `configured(overrides)`: the overrides go into user_configs, and because every deploy carries the same code
    version Serve applies them by calling `reconfigure` on the running replicas (nothing restarts)."""

    port: int
    data: Path
    overrides: dict[str, dict[str, Any]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any):
        import httpx
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def deploy(self, overrides: dict[str, dict[str, Any]]) -> None:
        """`serve.run` of the app with `overrides` merged into serve_config.yaml's user_configs (as
        `service.launcher.deploy` does); returns once the application is RUNNING again."""
        import ray
        from ray import serve

        from service.config import app_config, apply_cpu_profile, check_user_configs, deployment_options, load_config
        from graph import build_app
        config = apply_cpu_profile(load_config(), 0.1, ray.cluster_resources().get("CPU"))
        options = deployment_options(app_config(config), overrides)
        check_user_configs({"deployments": [{"name": n, "user_config": o.get("user_config")}
                                            for n, o in options.items()]})
        for opts in options.values():
            opts.update(version=APP_VERSION, _internal=True)   # Serve's own way to pin a deployment's version
        serve.run(build_app(options), name="avatar", route_prefix="/")
        self.overrides = overrides

    @contextmanager
    def configured(self, overrides: dict[str, dict[str, Any]]) -> Iterator["ServeApp"]:
        """The app with `overrides` for the duration of a module, then back to the session's defaults, healthy (a
        module that killed replicas has its replacements running before the next module starts)."""
        self.wait_healthy()
        self.deploy(overrides)
        try:
            yield self
        finally:
            try:
                self.wait_healthy()
            finally:
                self.deploy({})

    def wait_healthy(self, timeout_s: float = 300) -> None:
        """Every deployment HEALTHY with all its replicas RUNNING (serve.status), and the proxy answering."""
        import httpx
        from ray import serve
        from ray.serve.schema import ApplicationStatus, DeploymentStatus, ReplicaState
        deadline, why = time.monotonic() + timeout_s, "not checked"
        while time.monotonic() < deadline:
            app = serve.status().applications.get("avatar")
            if app is None or app.status != ApplicationStatus.RUNNING:
                why = f"application {app.status if app else 'missing'}"
            else:
                sick = {name: (d.status, dict(d.replica_states)) for name, d in app.deployments.items()
                        if d.status != DeploymentStatus.HEALTHY
                        or set(d.replica_states) - {ReplicaState.RUNNING}}
                why = f"deployments not settled: {sick}"
                if not sick:
                    try:
                        if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                            return
                        why = "the proxy does not answer /healthz"
                    except httpx.HTTPError as exc:
                        why = f"the proxy does not answer /healthz: {exc!r}"
            time.sleep(0.2)
        raise AssertionError(f"the shared Serve app did not become healthy in {timeout_s:g} s: {why}")


def start_serve_app(data: Path) -> ServeApp:
    """Serve on a free loopback port (serve_config.yaml's http_options) and the app with no overrides."""
    from ray import serve

    from avatar.settings import settings
    from service.config import load_config
    from service.launcher import http_options
    settings().check_shared_secrets()
    port = free_port()
    serve.start(http_options=http_options(load_config(), "127.0.0.1", port))
    app = ServeApp(port, data, {})
    app.deploy({})
    app.wait_healthy()
    return app
