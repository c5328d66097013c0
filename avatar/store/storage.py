"""Object storage through `pyarrow.fs` (a local directory by default; s3:// or gs:// by URI) and HMAC-signed URLs."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote

import pyarrow.fs as pafs

from avatar.errors import Forbidden, NotFound


class Storage:
    """Keys (`a/b/c.png`) under one root URI. Writes go to a temporary name first, so readers never see half a file."""

    def __init__(self, root_uri: str) -> None:
        if "://" not in root_uri:
            from pathlib import Path
            Path(root_uri).mkdir(parents=True, exist_ok=True)
        self.fs, self.root = pafs.FileSystem.from_uri(root_uri if "://" in root_uri else _abs(root_uri))
        self.uri = root_uri

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise NotFound(f"invalid key {key!r}", field="key")
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.part"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._path(key)) as src:
                return src.read()
        except (FileNotFoundError, OSError):
            raise NotFound(f"no object {key!r}", field="key") from None

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def modified(self, key: str) -> float | None:
        """Last modification time (epoch seconds) of `key`, or None if absent."""
        info = self.fs.get_file_info(self._path(key))
        if info.type != pafs.FileType.File or info.mtime is None:
            return None
        return info.mtime.timestamp()

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        root = self.root.rstrip("/") + "/"
        return sorted(i.path.removeprefix(root) for i in infos if i.type == pafs.FileType.File)


    def sizes(self, prefix: str, modified_after: float | None = None) -> dict[str, int]:
        """Size in bytes of every object under `prefix` (only those modified after `modified_after`, if given)."""
        base = self._path(prefix.rstrip("/"))
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        root = self.root.rstrip("/") + "/"
        return {i.path.removeprefix(root): i.size for i in infos if i.type == pafs.FileType.File
                and (modified_after is None or (i.mtime is not None and i.mtime.timestamp() > modified_after))}


def _abs(path: str) -> str:
    from pathlib import Path
    return str(Path(path).resolve())


@dataclass(frozen=True)
class UrlSigner:
    """Expiring HMAC-SHA256 signatures over `key` and the expiry; verification is constant-time."""

    secret: bytes
    ttl_s: int = 24 * 3600

    def _sig(self, key: str, expires: int) -> str:
        return hmac.new(self.secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, base_url: str, key: str, now: float | None = None) -> tuple[str, int]:
        expires = int((now or time.time()) + self.ttl_s)
        url = f"{base_url.rstrip('/')}/v1/files/{quote(key)}?expires={expires}&signature={self._sig(key, expires)}"
        return url, expires

    def verify(self, key: str, expires: str | None, signature: str | None, now: float | None = None) -> None:
        if not expires or not signature or not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            raise Forbidden("missing or malformed signature", field="signature", code="invalid_signature")
        if not hmac.compare_digest(self._sig(key, int(expires)), signature):
            raise Forbidden("signature does not match", field="signature", code="invalid_signature")
        if int(expires) < (now or time.time()):
            raise Forbidden("signed URL has expired", field="expires", code="url_expired")
