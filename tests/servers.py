"""Real servers for the shared-state tests, started on loopback by the tests themselves: PostgreSQL (the Debian
`postgresql` package: `initdb` + `pg_ctl` into a temporary directory) and an S3-compatible server (moto's server mode).

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
from dataclasses import dataclass
from pathlib import Path

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
