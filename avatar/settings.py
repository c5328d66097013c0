"""Every `AVATAR_*` environment variable, in one settings object (pydantic-settings).

Operators set these per process (pod, container, shell); what they tune per deployment lives in `serve_config.yaml`
instead. Defaults give the embedded local service: everything under `AVATAR_DATA_DIR` (default `./var`).
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment (prefix `AVATAR_`) when built; invalid values fail with the variable named."""

    model_config = SettingsConfigDict(env_prefix="AVATAR_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("var"), description="Root of local state: storage, usage log, accounts, secrets.")
    storage_uri: str = Field("", description="Outputs, tokens, cached inputs: a path, file://, s3:// or gs:// URI "
                                             "(default <data_dir>/storage).")
    usage_uri: str = Field("", description="The Parquet usage log (default <data_dir>/usage).")
    usage_journal_dir: Path | None = Field(None, description="Node-local directory where each usage row is fsynced "
                                                             "before the answer (default <data_dir>/usage-journal).")
    database_url: str = Field("", description="The service's database: accounts, keys, credits, rate limits, jobs. "
                                              "postgresql://user:password@host:5432/db for a cluster; default "
                                              "sqlite:///<data_dir>/accounts.sqlite3 (one node).")
    accounts_uri: str = Field("", description="Older name of AVATAR_DATABASE_URL (used when that is unset).")
    secrets_dir: Path | None = Field(None, description="A directory of secret files shared by every node (a mounted "
                                                       "Kubernetes Secret): one file per setting, named like the "
                                                       "variable in lower case, e.g. avatar_signing_secret.")
    jobs_uri: str = Field("", description="Job store of asynchronous generations and batches (default: "
                                          "AVATAR_DATABASE_URL when set, else sqlite in <data_dir>/jobs.sqlite3).")
    job_ttl_s: int = Field(24 * 3600, gt=0, description="How long a finished job, its outputs and idempotency "
                                                        "records are kept.")
    webhook_allow_private: bool = Field(False, description="Let webhook_url reach loopback, private and shared "
                                                           "(100.64/10) addresses (tests and development only); "
                                                           "metadata and link-local addresses stay refused.")
    webhook_retry_window_s: float = Field(24 * 3600, gt=0, description="How long a failing webhook delivery is "
                                                                       "retried (exponential backoff).")
    webhook_retry_base_s: float = Field(5.0, gt=0, description="First retry delay; each next one doubles.")
    webhook_retry_max_s: float = Field(3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="One deadline over a whole webhook send: DNS, "
                                                             "connect, request and the answer's headers.")
    webhook_secret_grace_s: float = Field(24 * 3600, ge=0, description="After a rotation, the old secret keeps "
                                                                       "signing beside the new one this long.")
    public_url: str = Field("", description="Base of signed URLs, e.g. https://avatars.example.com.")
    url_ttl_s: int = Field(24 * 3600, gt=0, description="Lifetime of signed output URLs.")
    operator_key: SecretStr | None = Field(None, description="Bearer credential of operator routes (GET /v1/stats); "
                                                             "unset: those routes answer 403.")
    signing_secret: SecretStr | None = Field(None, description="HMAC key of signed URLs (default on one node only: "
                                                               "generated once into <data_dir>/signing.key).")
    account_pepper: SecretStr | None = Field(None, description="Pepper of stored API-key digests (default on one node "
                                                               "only: generated once beside the SQLite file).")
    fetch_timeout_s: float = Field(10.0, gt=0, description="Whole-fetch deadline of image_url.")
    fetch_max_bytes: int = Field(15 * 2**20, gt=0, description="Largest image_url body.")
    fetch_allow_private: bool = Field(False, description="Let image_url reach loopback, private and shared addresses "
                                                         "(closed networks and tests only); metadata and link-local "
                                                         "addresses stay refused.")
    proxy_max_body_bytes: int = Field(21 * 2**20, gt=0, description="Serve proxy: largest request body (the ingress's "
                                                                    "max_body_bytes plus multipart framing).")
    proxy_upload_routes: dict[str, int] = Field(default_factory=dict, description="Serve proxy: the body cap of each "
                                                "route that takes large uploads, JSON {\"POST /v1/batches\": bytes, "
                                                "...} (default: derived from serve_config.yaml).")
    proxy_max_buffered_bytes: int = Field(512 * 2**20, gt=0, description="Serve proxy: request bodies held at once.")
    proxy_header_timeout_s: float = Field(10.0, gt=0, description="Serve proxy: deadline for a request's headers.")
    proxy_max_header_bytes: int = Field(64 * 2**10, gt=0, description="Serve proxy: largest request head.")
    proxy_body_timeout_s: float = Field(60.0, gt=0, description="Serve proxy: deadline for a whole request body.")
    proxy_body_idle_s: float = Field(10.0, gt=0, description="Serve proxy: longest pause inside a request body.")
    proxy_max_connections: int = Field(512, gt=0, description="Serve proxy: open client connections.")
    training_memory_mb: int = Field(4096, gt=0, description="Memory budget of style training jobs per node (a Ray "
                                                            "resource, avatar_training_mb, set when Ray starts).")
    training_job_base_mb: int = Field(900, gt=0, description="Estimated memory of a job's driver and Train "
                                                             "controller.")
    training_worker_mb: int = Field(450, gt=0, description="Estimated memory of one training worker.")
    models_dir: Path | None = Field(None, description="Model file cache (default "
                                                      "$XDG_CACHE_HOME/avatar-service/models).")
    model_face_detector: str | None = None
    model_face_detector_full: str | None = None
    model_face_landmarks: str | None = None
    model_person_segmenter: str | None = None
    model_person_matte: str | None = None
    model_identity_encoder: str | None = None
    model_identity_shape: str | None = None
    model_identity_sface: str | None = None
    model_safety_classifier: str | None = None
    model_upscaler: str | None = None
    model_upscaler_x4plus: str | None = None
    token_cache_dir: Path | None = Field(None, description="Local copies of diffusion style tokens (default "
                                                           "<system temp>/avatar-style-tokens).")
    max_tokens_per_replica: int = Field(64, ge=1, description="Custom style tokens a StyleApply replica keeps.")

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_storage_uri(self) -> str:
        return self.storage_uri or str(self.data_path / "storage")

    @property
    def resolved_usage_uri(self) -> str:
        return self.usage_uri or str(self.data_path / "usage")

    @property
    def resolved_usage_journal_dir(self) -> Path:
        return (self.usage_journal_dir or self.data_path / "usage-journal").expanduser()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or self.accounts_uri or f"sqlite:///{self.data_path / 'accounts.sqlite3'}"

    @property
    def resolved_accounts_uri(self) -> str:
        """The account store is the service's database."""
        return self.resolved_database_url

    @property
    def shared_state(self) -> list[str]:
        """The settings that put state outside this node (a networked database, remote storage); empty on one node.
        With any of them, every secret must be configured, because a per-node generated one breaks the others."""
        shared = []
        if not self.resolved_database_url.startswith("sqlite:"):
            shared.append("AVATAR_DATABASE_URL")
        if self.jobs_uri and not self.jobs_uri.startswith("sqlite:"):
            shared.append("AVATAR_JOBS_URI")
        for name, uri in (("AVATAR_STORAGE_URI", self.storage_uri), ("AVATAR_USAGE_URI", self.usage_uri)):
            if "://" in uri and not uri.startswith("file://"):
                shared.append(name)
        return shared

    @property
    def resolved_jobs_uri(self) -> str:
        return self.jobs_uri or self.database_url or f"sqlite:///{self.data_path / 'jobs.sqlite3'}"

    @property
    def resolved_models_dir(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir.expanduser()
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "avatar-service" / "models"

    def model_source(self, component: str) -> str | None:
        """`AVATAR_MODEL_<COMPONENT>`: a path, file:// or http(s):// URL, or hf://repo/file for that component."""
        return getattr(self, f"model_{component}", None)

    def url_signing_key(self) -> bytes:
        """The HMAC key of signed URLs: configured, else (one node only) a file generated into the data directory."""
        configured = _secret(self.signing_secret)
        if configured:
            return configured
        self._refuse_generated("AVATAR_SIGNING_SECRET", "the URLs one node signs would not verify on another")
        return shared_secret_file(self.data_path / "signing.key")

    def pepper(self, beside: Path | None, shared: bool = False) -> bytes:
        """The API-key pepper: configured, else (one node only) a file beside the SQLite database (random per process
        for an in-memory one). `shared`: the database itself is reached by other nodes."""
        configured = _secret(self.account_pepper)
        if configured:
            return configured
        self._refuse_generated("AVATAR_ACCOUNT_PEPPER", "an API key created on one node would not work on another",
                               ["AVATAR_DATABASE_URL"] if shared else [])
        return shared_secret_file(beside) if beside is not None else secrets.token_bytes(32)

    def check_shared_secrets(self) -> None:
        """Fail start-up (SharedSecretMissing) when state is shared and a secret would be generated per node."""
        self.url_signing_key()
        self.pepper(None, shared=False)

    def _refuse_generated(self, variable: str, why: str, shared: list[str] | None = None) -> None:
        shared = sorted(set(self.shared_state + (shared or [])))
        if shared:
            raise SharedSecretMissing(
                f"{variable} is not set, but state is shared between nodes ({', '.join(shared)}): a secret generated "
                f"on each node cannot work, because {why}. Set {variable} to the same value on every node, or put it "
                f"in the file {variable.lower()} of AVATAR_SECRETS_DIR (a mounted Secret).")


class SharedSecretMissing(RuntimeError):
    """A secret would be generated per node although state is shared between nodes: start-up must stop."""


_built: tuple[tuple[tuple[str, str], ...], Settings] | None = None
_lock = threading.Lock()


def _avatar_environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("AVATAR_")))


def settings() -> Settings:
    """The settings of this process (and the secret files of `AVATAR_SECRETS_DIR`), built once and shared by every
    caller. They are built again only when the `AVATAR_*` environment differs from the one they were built from (a
    CLI or a test that sets a variable), or after `reset_settings()` (a secret file changed)."""
    global _built
    environment = _avatar_environment()
    built = _built
    if built is not None and built[0] == environment:
        return built[1]
    with _lock:
        secrets_dir = os.environ.get("AVATAR_SECRETS_DIR")   # where the other fields are read from: needed first
        fresh = Settings(_secrets_dir=secrets_dir) if secrets_dir else Settings()
        _built = (environment, fresh)
        return fresh


def reset_settings() -> None:
    """Forget the built settings: the next `settings()` reads the environment and the secret files again."""
    global _built
    with _lock:
        _built = None


def _secret(value: SecretStr | None) -> bytes:
    return value.get_secret_value().encode() if value is not None else b""


def shared_secret_file(path: Path) -> bytes:
    """A secret generated once into `path` (0600) and shared by every process on this node."""
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
