"""Accounts and the per-account style registry: hashed keys, authentication, isolation between accounts; on both
backends (an SQLite file and a real PostgreSQL server), with versioned migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import db_workers
import pytest

from avatar.store.accounts import SqliteAccountStore, open_account_store
from avatar.store.migrations import MIGRATIONS
from avatar.errors import InvalidRequest
from avatar.tokens import new_token_id


@pytest.fixture()
def store(database_url, monkeypatch):
    if database_url.startswith("postgresql"):
        monkeypatch.setenv("AVATAR_ACCOUNT_PEPPER", "a pepper every node shares")
    return open_account_store(database_url)


def test_create_and_authenticate(store):
    account_id, key = store.create_account("Acme Games")
    assert store.authenticate(key) == account_id
    assert store.get_account(account_id).name == "Acme Games"
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    for bad in (None, "", "avk_", "nonsense", key.split(".")[0], key + "x"):
        assert store.authenticate(bad) is None


def test_keys_are_never_stored(store):
    _, key = store.create_account("Acme")
    secret = key.split(".", 1)[1]
    with store.db.transaction(write=False) as tx:
        rows = tx.execute("SELECT digest FROM api_keys").fetchall()
        everything = repr([tx.execute(f"SELECT * FROM {t}").fetchall() for t in ("accounts", "api_keys")])
    assert len(rows) == 1 and rows[0][0] != secret and len(rows[0][0]) == 64
    assert secret not in everything
    if hasattr(store, "path"):   # the SQLite file itself, WAL included
        folder = Path(store.path).parent
        raw = b"".join(p.read_bytes() for p in folder.iterdir() if not p.name.endswith(".pepper"))
        assert secret.encode() not in raw


def test_store_persists_and_needs_its_pepper(tmp_path):
    path = tmp_path / "a.sqlite3"
    account_id, key = SqliteAccountStore(path).create_account("Acme")
    assert open_account_store(f"sqlite:///{path}").authenticate(key) == account_id
    assert SqliteAccountStore(path, pepper=b"another pepper").authenticate(key) is None


def test_rotate_key_revokes_the_old_one(store):
    account_id, old = store.create_account("Acme")
    new = store.rotate_key(account_id)
    assert store.authenticate(old) is None and store.authenticate(new) == account_id


def test_invalid_names_and_uris(store):
    with pytest.raises(InvalidRequest):
        store.create_account("   ")
    with pytest.raises(ValueError, match="unsupported"):
        open_account_store("mysql://nowhere")
    assert open_account_store("sqlite://:memory:").create_account("x")[0].startswith("acc_")


def test_styles_are_isolated_between_accounts(store):
    a, _ = store.create_account("A")
    b, _ = store.create_account("B")
    token = new_token_id()
    store.register_style(a, token, {"token_id": token, "base_style": "corporate_headshot"})
    assert store.get_style(a, token).manifest["base_style"] == "corporate_headshot"
    assert store.get_style(b, token) is None                      # same answer as a missing token
    assert store.get_style(b, new_token_id()) is None
    assert [s.token_id for s in store.list_styles(a)] == [token] and store.list_styles(b) == []
    assert store.delete_style(b, token) is False and store.get_style(a, token) is not None
    with pytest.raises(InvalidRequest) as taken:
        store.register_style(b, token, {})                         # B cannot take over A's token id
    assert taken.value.status == 409 and store.get_style(b, token) is None
    assert store.delete_style(a, token) is True and store.get_style(a, token) is None


def test_register_rejects_bad_ids_and_unknown_accounts(store):
    a, _ = store.create_account("A")
    with pytest.raises(InvalidRequest):
        store.register_style(a, "sty_x", {})
    with pytest.raises(KeyError):
        store.register_style("acc_missing", new_token_id(), {})


def test_plans_are_kept_per_account(store):
    a, _ = store.create_account("A", plan="team")
    b, _ = store.create_account("B")
    assert store.get_account(a).plan == "team" and store.get_account(b).plan is None
    store.set_plan(b, "team")
    assert store.get_account(b).plan == "team"
    with pytest.raises(KeyError):
        store.set_plan("acc_missing", "team")


def test_a_shared_database_refuses_a_generated_pepper(postgres, monkeypatch):
    monkeypatch.delenv("AVATAR_ACCOUNT_PEPPER", raising=False)
    with pytest.raises(RuntimeError, match="AVATAR_ACCOUNT_PEPPER is not set.*AVATAR_DATABASE_URL"):
        open_account_store(postgres.new_database())


def test_an_existing_account_file_adopts_the_versioned_schema(tmp_path):
    """A file written before migrations existed keeps its accounts and keys, and gains the new tables."""
    path = tmp_path / "accounts.sqlite3"
    db = sqlite3.connect(path)   # the pre-versioning layout, as the old release created it
    db.executescript("""
        CREATE TABLE accounts (account_id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(account_id),
            digest TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE styles (token_id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(account_id),
            manifest TEXT NOT NULL, created_at REAL NOT NULL);""")
    import hashlib
    import hmac
    pepper = b"old pepper"
    (tmp_path / "accounts.sqlite3.pepper").write_bytes(pepper)
    digest = hmac.new(pepper, b"s3cret", hashlib.sha256).hexdigest()
    db.execute("INSERT INTO accounts VALUES ('acc_0000000000000001', 'Old', 1.0)")
    db.execute("INSERT INTO api_keys VALUES ('00000001', 'acc_0000000000000001', ?, 1.0)", (digest,))
    db.commit()
    db.close()
    store = open_account_store(f"sqlite:///{path}")
    assert isinstance(store, SqliteAccountStore)
    assert store.authenticate("avk_00000001.s3cret") == "acc_0000000000000001"
    assert store.get_account("acc_0000000000000001").plan is None
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]


def test_replicas_starting_together_apply_each_migration_once(postgres):
    """Four processes migrate one PostgreSQL database at once: each step is applied by exactly one of them."""
    import multiprocessing
    url = postgres.new_database()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        applied = pool.map(db_workers.migrate, [url] * 4)
    assert sorted(v for a in applied for v in a) == [m.version for m in MIGRATIONS]
    assert sum(1 for a in applied if a) == 1


def test_a_newer_schema_is_refused(database_url):
    from avatar.store.database import open_database
    from avatar.store.migrations import SchemaTooNew
    db = open_database(database_url)
    with db.transaction() as tx:
        tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                   (MIGRATIONS[-1].version + 1, "from the future", 0.0))
    with pytest.raises(SchemaTooNew, match="newer than this release"):
        db.migrate()
