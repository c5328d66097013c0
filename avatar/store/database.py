"""The service's database, one interface over two backends: SQLite (the embedded default, one file per node) and
PostgreSQL (psycopg 3 with a connection pool: the shared state of a cluster). `AVATAR_DATABASE_URL` picks one.

Stores write their SQL once, with `?` placeholders and types both engines accept (TEXT, BIGINT, DOUBLE PRECISION,
BOOLEAN); the PostgreSQL side turns `?` into psycopg's `%s`. What differs between the engines lives here:
- write transactions: SQLite takes the database's write lock up front (`BEGIN IMMEDIATE`), so a read-then-write never
  races another process; PostgreSQL runs READ COMMITTED and stores lock the rows they change (`tx.for_update`,
  conditional `UPDATE ... WHERE`, `INSERT ... ON CONFLICT`).
- the clock: `tx.now()` is the database server's time, one clock for every node of a cluster.
- migrations (`avatar.store.migrations`) run under one lock, so replicas starting together apply each step once.

One `Database` per URL and process (`open_database`): the account store, the ledger, the rate limiter and the job
store of a replica share its pool.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from avatar.store.migrations import apply as apply_migrations

SQLITE, POSTGRES = "sqlite", "postgresql"
_PG_SCHEMES = ("postgresql", "postgres")
_MIGRATION_LOCK = 0x61766174   # pg_advisory_xact_lock key of schema migrations ("avat")


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Sequence[Any] | None: ...
    def fetchall(self) -> list[Sequence[Any]]: ...


class Tx:
    """One transaction: `execute` with `?` placeholders, the dialect's row lock and the server clock."""

    def __init__(self, dialect: str, cursor: Any) -> None:
        self.dialect = dialect
        self._cur = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.dialect == POSTGRES:
            sql = sql.replace("%", "%%").replace("?", "%s")
            self._cur.execute(sql, tuple(params))
            return self._cur
        return self._cur.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.dialect == POSTGRES:
            self._cur.executemany(sql.replace("%", "%%").replace("?", "%s"), [tuple(r) for r in rows])
        else:
            self._cur.executemany(sql, [tuple(r) for r in rows])

    @property
    def for_update(self) -> str:
        """Suffix of a SELECT whose rows this transaction will change (SQLite holds the whole-file lock already)."""
        return " FOR UPDATE" if self.dialect == POSTGRES else ""

    def serialize(self, name: str) -> None:
        """Hold `name`'s lock until this transaction ends, so check-then-write sections of every process run one at a
        time (SQLite's write transaction holds the whole file already; PostgreSQL takes an advisory lock)."""
        if self.dialect == POSTGRES:
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))

    def now(self) -> float:
        """The database server's clock, epoch seconds (SQLite: this machine's)."""
        if self.dialect == POSTGRES:
            return float(self.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())").fetchone()[0])
        return time.time()


class Database:
    """A URL's database: `transaction()` hands out a `Tx`; `migrate()` brings the schema up to date."""

    dialect: str
    url: str

    def transaction(self, write: bool = True) -> Any:   # a context manager of Tx
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def shared(self) -> bool:
        """Whether other machines can reach it (a networked server): secrets must then be shared too."""
        return self.dialect != SQLITE

    def migrate(self) -> list[int]:
        return apply_migrations(self)


class SqliteDatabase(Database):
    """A file in WAL mode shared by every process of one node; a connection per transaction keeps threads apart.
    `:memory:` keeps one connection for this process (tests)."""

    dialect = SQLITE

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self._memory = self.path == ":memory:"
        self._lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, opened once (opening one per transaction cost more than the transaction)."""
        if self._memory:
            if self._shared is None:
                self._shared = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            return self._shared
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db, self._local.pid = db, os.getpid()
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        with self._lock if self._memory else _nothing():
            db = self._connect()
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Tx(SQLITE, db.cursor())
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.ProgrammingError:   # another thread's: closed when that thread ends
                    pass
            self._connections.clear()
        self._local = threading.local()
        if self._shared is not None:
            self._shared.close()
            self._shared = None


class PostgresDatabase(Database):
    """A PostgreSQL server through a psycopg 3 connection pool (opened on first use, sized per process)."""

    dialect = POSTGRES

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8) -> None:
        from psycopg_pool import ConnectionPool
        self.url = url
        self.pool = ConnectionPool(url, min_size=min_size, max_size=max_size, open=True, timeout=30,
                                   name="avatar")

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        with self.pool.connection() as conn:
            with conn.transaction():
                yield Tx(POSTGRES, conn.cursor())

    def close(self) -> None:
        self.pool.close()

    def lock_migrations(self, tx: Tx) -> None:
        tx.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def dialect_of(url: str) -> str:
    scheme = url.partition("://")[0].split("+")[0]
    if scheme == SQLITE:
        return SQLITE
    if scheme in _PG_SCHEMES:
        return POSTGRES
    raise ValueError(f"unsupported database URL {redact(url)!r}: use sqlite:///path or postgresql://...")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def sqlite_path(url: str) -> str:
    """`sqlite:///relative/path` -> relative/path, `sqlite:////abs/path` -> /abs/path, `sqlite://` -> :memory:."""
    rest = url.partition("://")[2]
    path = rest[1:] if rest.startswith("/") else rest
    return path or ":memory:"


_OPEN: dict[str, Database] = {}
_OPEN_LOCK = threading.Lock()


def open_database(url: str, migrate: bool = True) -> Database:
    """This process's `Database` for `url`, migrated to the current schema on first open (start-up)."""
    key = f"{os.getpid()}:{url}"
    with _OPEN_LOCK:
        db = _OPEN.get(key)
        if db is None:
            dialect = dialect_of(url)
            db = SqliteDatabase(sqlite_path(url)) if dialect == SQLITE else PostgresDatabase(url)
            if migrate:
                db.migrate()
            _OPEN[key] = db
        return db


def close_all() -> None:
    """Close every database this process opened (tests; a replica's shutdown)."""
    with _OPEN_LOCK:
        for db in _OPEN.values():
            db.close()
        _OPEN.clear()
