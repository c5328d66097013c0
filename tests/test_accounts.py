"""Accounts and the per-account style registry: hashed keys, authentication, isolation between accounts."""

from __future__ import annotations

import sqlite3

import pytest

from avatar.store.accounts import SqliteAccountStore, open_account_store
from avatar.errors import InvalidRequest
from avatar.tokens import new_token_id


@pytest.fixture()
def store(tmp_path):
    return open_account_store(f"sqlite:///{tmp_path / 'db' / 'accounts.sqlite3'}")


def test_create_and_authenticate(store):
    account_id, key = store.create_account("Acme Games")
    assert store.authenticate(key) == account_id
    assert store.get_account(account_id).name == "Acme Games"
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    for bad in (None, "", "avk_", "nonsense", key.split(".")[0], key + "x"):
        assert store.authenticate(bad) is None


def test_keys_are_never_stored(store, tmp_path):
    _, key = store.create_account("Acme")
    secret = key.split(".", 1)[1]
    raw = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir() if not p.name.endswith(".pepper"))
    assert secret.encode() not in raw
    rows = sqlite3.connect(store.path).execute("SELECT digest FROM api_keys").fetchall()
    assert len(rows) == 1 and rows[0][0] != secret and len(rows[0][0]) == 64


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
        open_account_store("postgres://nowhere")
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
    with pytest.raises(sqlite3.IntegrityError):
        store.register_style(b, token, {})                         # B cannot take over A's token id
    assert store.delete_style(a, token) is True and store.get_style(a, token) is None


def test_register_rejects_bad_ids_and_unknown_accounts(store):
    a, _ = store.create_account("A")
    with pytest.raises(InvalidRequest):
        store.register_style(a, "sty_x", {})
    with pytest.raises(KeyError):
        store.register_style("acc_missing", new_token_id(), {})
