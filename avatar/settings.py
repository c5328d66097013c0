"""Service settings an operator sets through the environment (`AVATAR_*`); per-stage tunables come from serve_config."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AVATAR_{name}", default)


@dataclass(frozen=True)
class ServiceSettings:
    """Where outputs go, how URLs are signed, how URLs are fetched. Defaults give the embedded local service."""

    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", "var")).resolve())
    storage_uri: str = field(default_factory=lambda: _env("STORAGE_URI", ""))
    usage_uri: str = field(default_factory=lambda: _env("USAGE_URI", ""))
    public_url: str = field(default_factory=lambda: _env("PUBLIC_URL", ""))
    url_ttl_s: int = field(default_factory=lambda: int(_env("URL_TTL_S", str(24 * 3600))))
    fetch_timeout_s: float = field(default_factory=lambda: float(_env("FETCH_TIMEOUT_S", "10")))
    fetch_max_bytes: int = field(default_factory=lambda: int(_env("FETCH_MAX_BYTES", str(15 * 2**20))))
    fetch_allow_private: bool = field(default_factory=lambda: _env("FETCH_ALLOW_PRIVATE", "0") == "1")

    @property
    def resolved_storage_uri(self) -> str:
        """The storage root: `AVATAR_STORAGE_URI` (local path, file://, s3://, gs://) or `<data_dir>/storage`."""
        return self.storage_uri or str(self.data_dir / "storage")

    @property
    def resolved_usage_uri(self) -> str:
        """Where the Parquet usage log goes: `AVATAR_USAGE_URI` or `<data_dir>/usage`."""
        return self.usage_uri or str(self.data_dir / "usage")

    def signing_secret(self) -> bytes:
        """`AVATAR_SIGNING_SECRET`, else a secret generated once into the data dir so every replica shares it."""
        return local_secret("AVATAR_SIGNING_SECRET", self.data_dir / "signing.key")


def local_secret(env_name: str, path: Path) -> bytes:
    """The secret in `$env_name`, else one generated once into `path` (0600) and shared by every process."""
    env = os.environ.get(env_name)
    if env:
        return env.encode()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)   # atomic create-if-absent: concurrent processes agree on one secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()
