"""Secrets shared by every node: with a shared database or remote storage the service refuses to start on a secret
generated per node, and names what to set; secrets come from settings or from a secrets directory (a mounted
Secret)."""

from __future__ import annotations

import pytest

from avatar.settings import Settings, SharedSecretMissing, settings
from cli import main

SHARED = [("AVATAR_DATABASE_URL", "postgresql://avatar@db.internal:5432/avatar"),
          ("AVATAR_STORAGE_URI", "s3://avatars/prod"),
          ("AVATAR_USAGE_URI", "gs://avatars-usage/log")]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("AVATAR_DATABASE_URL", "AVATAR_ACCOUNTS_URI", "AVATAR_STORAGE_URI", "AVATAR_USAGE_URI",
                 "AVATAR_SIGNING_SECRET", "AVATAR_ACCOUNT_PEPPER", "AVATAR_SECRETS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path / "var"))


def test_one_node_generates_its_secrets_once(tmp_path):
    env = settings()
    assert env.shared_state == []
    key = env.url_signing_key()
    assert key == settings().url_signing_key() and len(key) == 64
    assert (tmp_path / "var" / "signing.key").stat().st_mode & 0o777 == 0o600
    env.check_shared_secrets()


@pytest.mark.parametrize("variable,value", SHARED)
def test_shared_state_refuses_a_generated_secret(monkeypatch, tmp_path, variable, value):
    monkeypatch.setenv(variable, value)
    env = settings()
    assert env.shared_state == [variable]
    with pytest.raises(SharedSecretMissing, match=f"AVATAR_SIGNING_SECRET is not set.*{variable}"):
        env.url_signing_key()
    with pytest.raises(SharedSecretMissing, match=f"AVATAR_ACCOUNT_PEPPER is not set.*{variable}"):
        env.pepper(None)
    assert not (tmp_path / "var" / "signing.key").exists()          # nothing was generated on the way
    monkeypatch.setenv("AVATAR_SIGNING_SECRET", "one key for every node")
    monkeypatch.setenv("AVATAR_ACCOUNT_PEPPER", "one pepper for every node")
    env = settings()
    env.check_shared_secrets()
    assert env.url_signing_key() == b"one key for every node" and env.pepper(None) == b"one pepper for every node"


def test_local_file_urls_are_not_shared_state(monkeypatch, tmp_path):
    monkeypatch.setenv("AVATAR_STORAGE_URI", f"file://{tmp_path}/storage")
    monkeypatch.setenv("AVATAR_DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite3")
    assert settings().shared_state == []


def test_secrets_come_from_a_mounted_directory(monkeypatch, tmp_path):
    """A Kubernetes Secret mounted as files (one per key); environment variables still win."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "avatar_signing_secret").write_text("key from the secret file")
    (secrets_dir / "avatar_account_pepper").write_text("pepper from the secret file")
    (secrets_dir / "avatar_database_url").write_text("postgresql://avatar:pw@db:5432/avatar")
    monkeypatch.setenv("AVATAR_SECRETS_DIR", str(secrets_dir))
    env = settings()
    assert env.url_signing_key() == b"key from the secret file"
    assert env.pepper(None) == b"pepper from the secret file"
    assert env.resolved_database_url == "postgresql://avatar:pw@db:5432/avatar" and env.shared_state
    env.check_shared_secrets()
    monkeypatch.setenv("AVATAR_SIGNING_SECRET", "from the environment")
    assert settings().url_signing_key() == b"from the environment"


def test_the_accounts_uri_still_names_the_database(monkeypatch):
    monkeypatch.setenv("AVATAR_ACCOUNTS_URI", "sqlite:////srv/accounts.sqlite3")
    assert settings().resolved_database_url == "sqlite:////srv/accounts.sqlite3"
    monkeypatch.setenv("AVATAR_DATABASE_URL", "sqlite:////srv/avatar.sqlite3")
    assert settings().resolved_database_url == settings().resolved_accounts_uri == "sqlite:////srv/avatar.sqlite3"


def test_the_service_refuses_to_start(monkeypatch, capsys):
    """`avatar serve` and the launcher stop before Ray starts, with the message that says what to set."""
    monkeypatch.setenv("AVATAR_STORAGE_URI", "s3://avatars/prod")
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "AVATAR_SIGNING_SECRET is not set" in err and "AVATAR_SECRETS_DIR" in err
    from service.launcher import deploy
    with pytest.raises(SharedSecretMissing):
        deploy(profile="cpu", port=1)


def test_the_ingress_replica_refuses_too(monkeypatch):
    """A replica started by a serve config (no launcher) fails its constructor with the same message."""
    monkeypatch.setenv("AVATAR_DATABASE_URL", "postgresql://avatar@127.0.0.1:1/avatar")
    from service.ingress import Ingress
    with pytest.raises(SharedSecretMissing, match="AVATAR_SIGNING_SECRET"):
        Ingress()


def test_settings_type_is_frozen():
    with pytest.raises(Exception):
        Settings().database_url = "x"   # type: ignore[misc]


def test_settings_are_built_once_per_environment(tmp_path, monkeypatch):
    """Built once and shared (they were rebuilt on every call, some per request); a changed AVATAR_* variable or
    an explicit reset builds them again."""
    from avatar.settings import reset_settings
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path / "a"))
    first = settings()
    assert settings() is first
    monkeypatch.setenv("AVATAR_DATA_DIR", str(tmp_path / "b"))
    second = settings()
    assert second is not first and second.data_dir == tmp_path / "b"
    reset_settings()
    assert settings() is not second and settings() == second
