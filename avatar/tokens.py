"""The custom style token: what style training produces and `CpuStyleEngine` applies as `StyleSpec.token`.

Stored under `styles/<account_id>/<token_id>/` in the service storage:
- `token.safetensors`: `lut` (N, N, N, 3) float32 in 0..1, indexed `[r, g, b]` (the full colour map, tone curve baked
  in, applied trilinearly), `curve` (3, K) float32 (the learnt per-channel tone curve on K evenly spaced knots, kept for
  inspection and re-training), and the engine parameter overrides as JSON metadata;
- `manifest.json`: id, format version, account, base engine and style, examples' fingerprint, metrics, creation time.
The tensors are written before the manifest, so a token whose manifest exists is complete.

A diffusion token (`manifest["kind"] == "textual_inversion"`, trained by `training.train_diffusion_style`) keeps
`embedding.safetensors` instead: `{placeholder: (D,) float32}`, the learnt word's vector in the diffusers
textual-inversion format, plus the same manifest with the base model it was learnt on. `load_token` returns it as the
dict `DiffusionStyleEngine` takes (`kind`, `path` of a local file, `trigger`, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Protocol

import numpy as np
from safetensors.numpy import load as st_load, save as st_save

from avatar.contracts import STYLE_TOKEN_RE
from avatar.errors import NotFound
from avatar.settings import settings

FORMAT_VERSION = 1
TOKEN_FILE = "token.safetensors"
MANIFEST_FILE = "manifest.json"
EMBEDDING_FILE = "embedding.safetensors"
DIFFUSION_KIND = "textual_inversion"


class ObjectStore(Protocol):
    """The part of `avatar.store.storage.Storage` tokens need."""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


@dataclass
class StyleToken:
    token_id: str
    account_id: str
    lut: np.ndarray                       # (N, N, N, 3) float32 0..1, [r, g, b] -> rgb
    curve: np.ndarray                     # (3, K) float32 0..1
    params: dict[str, Any] = field(default_factory=dict)   # engine look overrides, e.g. {"base_style": ...}
    manifest: dict[str, Any] = field(default_factory=dict)

    def as_spec_token(self) -> dict[str, Any]:
        """The dict `StyleSpec.token` expects."""
        # the per-channel curve is already inside `lut`; it goes under its own key so the engine's 1D `curve`
        # hook does not apply it twice
        return {"id": self.token_id, "version": self.manifest.get("version", FORMAT_VERSION), "lut": self.lut,
                "tone_curve": self.curve, "params": dict(self.params), "manifest": self.manifest}


def new_token_id() -> str:
    """A fresh unguessable token id (`sty_` + 22 url-safe characters), valid under `STYLE_TOKEN_RE`."""
    return "sty_" + secrets.token_urlsafe(16)


def token_prefix(account_id: str, token_id: str) -> str:
    if not STYLE_TOKEN_RE.match(token_id) or not account_id or "/" in account_id or ".." in account_id:
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found")
    return f"styles/{account_id}/{token_id}"


def examples_fingerprint(example_hashes: Iterable[str]) -> str:
    """Order-independent hash of the examples' content hashes: the same set of images gives the same fingerprint."""
    return hashlib.sha256("\n".join(sorted(example_hashes)).encode()).hexdigest()


def build_manifest(token_id: str, account_id: str, *, base_engine: tuple[str, str], base_style: str,
                   fingerprint: str, example_count: int, metrics: dict[str, float], lut_size: int,
                   curve_knots: int, training: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"token_id": token_id, "version": FORMAT_VERSION, "account_id": account_id,
            "base_engine": {"name": base_engine[0], "version": base_engine[1]}, "base_style": base_style,
            "examples": {"count": example_count, "fingerprint": fingerprint},
            "metrics": {k: float(v) for k, v in metrics.items()}, "lut_size": lut_size, "curve_knots": curve_knots,
            "training": dict(training or {}), "created_at": datetime.now(timezone.utc).isoformat()}


def save_token(storage: ObjectStore, token: StyleToken) -> str:
    """Write the token (tensors first, manifest last) and return its storage prefix."""
    prefix = token_prefix(token.account_id, token.token_id)
    lut = np.ascontiguousarray(np.clip(token.lut, 0.0, 1.0), dtype=np.float32)
    if lut.ndim != 4 or lut.shape[-1] != 3 or len(set(lut.shape[:3])) != 1:
        raise ValueError(f"lut must be (N, N, N, 3), got {lut.shape}")
    curve = np.ascontiguousarray(token.curve, dtype=np.float32)
    blob = st_save({"lut": lut, "curve": curve},
                   metadata={"params": json.dumps(token.params, sort_keys=True), "token_id": token.token_id,
                             "format_version": str(FORMAT_VERSION)})
    manifest = dict(token.manifest, token_id=token.token_id, account_id=token.account_id)
    manifest.setdefault("version", FORMAT_VERSION)
    manifest["params"] = token.params
    manifest["sha256"] = hashlib.sha256(blob).hexdigest()
    storage.put(f"{prefix}/{TOKEN_FILE}", blob)
    storage.put(f"{prefix}/{MANIFEST_FILE}", json.dumps(manifest, sort_keys=True, indent=1).encode())
    token.manifest = manifest
    return prefix


def load_token(storage: ObjectStore, account_id: str, token_id: str) -> dict[str, Any]:
    """The token as `StyleSpec.token` wants it. NotFound (404) when missing, incomplete or another account's.

    CPU tokens give `{id, version, lut, tone_curve, params, manifest}`; diffusion tokens give
    `{kind: "textual_inversion", path, trigger, id, version, base_style, base_model_id, params, manifest}` where `path`
    is a local file (the storage file itself on local storage, else a checksum-named copy in the local token cache).
    """
    manifest = _read_manifest(storage, account_id, token_id)
    if manifest.get("kind") == DIFFUSION_KIND:
        return _load_diffusion_token(storage, account_id, token_id, manifest)
    return _load_lut_token(storage, account_id, token_id, manifest).as_spec_token()


def _read_manifest(storage: ObjectStore, account_id: str, token_id: str) -> dict[str, Any]:
    prefix = token_prefix(account_id, token_id)
    try:
        manifest = json.loads(storage.get(f"{prefix}/{MANIFEST_FILE}"))
    except (NotFound, FileNotFoundError):
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found") from None
    if manifest.get("account_id") != account_id or manifest.get("token_id") != token_id:
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found")
    return manifest


def load_style_token(storage: ObjectStore, account_id: str, token_id: str) -> StyleToken:
    return _load_lut_token(storage, account_id, token_id, _read_manifest(storage, account_id, token_id))


def _load_lut_token(storage: ObjectStore, account_id: str, token_id: str, manifest: dict[str, Any]) -> StyleToken:
    prefix = token_prefix(account_id, token_id)
    try:
        blob = storage.get(f"{prefix}/{TOKEN_FILE}")
    except (NotFound, FileNotFoundError):
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found") from None
    if manifest.get("sha256") and manifest["sha256"] != hashlib.sha256(blob).hexdigest():
        raise NotFound(f"style {token_id!r} is corrupt", field="style", code="style_corrupt")
    tensors = st_load(blob)
    return StyleToken(token_id=token_id, account_id=account_id, lut=tensors["lut"], curve=tensors["curve"],
                      params=dict(manifest.get("params", {})), manifest=manifest)


def delete_token(storage: ObjectStore, account_id: str, token_id: str) -> None:
    """Remove the token's files (manifest first, so it stops loading at once)."""
    prefix = token_prefix(account_id, token_id)
    storage.delete(f"{prefix}/{MANIFEST_FILE}")
    storage.delete(f"{prefix}/{TOKEN_FILE}")
    storage.delete(f"{prefix}/{EMBEDDING_FILE}")


# ---------------------------------------------------------------- diffusion tokens (textual inversion)
@dataclass
class DiffusionToken:
    """A learnt word for a diffusion base model: `placeholder` (the trigger, `<token_id>`) and its embedding."""

    token_id: str
    account_id: str
    placeholder: str
    vector: np.ndarray                    # (D,) float32, D = the base model's text-encoder width
    manifest: dict[str, Any] = field(default_factory=dict)


def build_diffusion_manifest(token_id: str, account_id: str, *, placeholder: str, base_style: str,
                             base_model: dict[str, Any], fingerprint: str, example_count: int,
                             metrics: dict[str, float], training: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base_model`: `{ref, family, fingerprint, embedding_dim}` of the model the embedding was learnt on."""
    return {"token_id": token_id, "version": FORMAT_VERSION, "kind": DIFFUSION_KIND, "account_id": account_id,
            "base_engine": {"name": "diffusion", "version": FORMAT_VERSION}, "base_style": base_style,
            "base_model": dict(base_model), "placeholder": placeholder,
            "examples": {"count": example_count, "fingerprint": fingerprint},
            "metrics": {k: float(v) for k, v in metrics.items()}, "training": dict(training or {}),
            "created_at": datetime.now(timezone.utc).isoformat()}


def save_diffusion_token(storage: ObjectStore, token: DiffusionToken) -> str:
    """Write the embedding (diffusers textual-inversion format) and then the manifest; returns the storage prefix."""
    prefix = token_prefix(token.account_id, token.token_id)
    vector = np.ascontiguousarray(token.vector, dtype=np.float32).reshape(-1)
    if not np.isfinite(vector).all():
        raise ValueError("embedding has non-finite values")
    blob = st_save({token.placeholder: vector}, metadata={"token_id": token.token_id,
                                                          "format_version": str(FORMAT_VERSION)})
    manifest = dict(token.manifest, token_id=token.token_id, account_id=token.account_id, kind=DIFFUSION_KIND,
                    placeholder=token.placeholder)
    manifest.setdefault("version", FORMAT_VERSION)
    manifest.setdefault("params", {"base_style": manifest.get("base_style")})
    manifest["sha256"] = hashlib.sha256(blob).hexdigest()
    storage.put(f"{prefix}/{EMBEDDING_FILE}", blob)
    storage.put(f"{prefix}/{MANIFEST_FILE}", json.dumps(manifest, sort_keys=True, indent=1).encode())
    token.manifest = manifest
    return prefix


def token_cache_dir() -> str:
    """Where embeddings from non-local storage are copied for the diffusion pipelines to read
    (`AVATAR_TOKEN_CACHE_DIR`, else `<system temp>/avatar-style-tokens`)."""
    configured = settings().token_cache_dir
    return str(configured) if configured else os.path.join(tempfile.gettempdir(), "avatar-style-tokens")


def _local_path(storage: ObjectStore, key: str) -> str | None:
    """The local file behind `key` when the storage is a local directory, else None."""
    fs, path_of = getattr(storage, "fs", None), getattr(storage, "_path", None)
    if fs is None or path_of is None or type(fs).__name__ != "LocalFileSystem":
        return None
    return path_of(key)


def _load_diffusion_token(storage: ObjectStore, account_id: str, token_id: str,
                          manifest: dict[str, Any]) -> dict[str, Any]:
    key = f"{token_prefix(account_id, token_id)}/{EMBEDDING_FILE}"
    try:
        blob = storage.get(key)
    except (NotFound, FileNotFoundError):
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found") from None
    digest = hashlib.sha256(blob).hexdigest()
    if manifest.get("sha256") and manifest["sha256"] != digest:
        raise NotFound(f"style {token_id!r} is corrupt", field="style", code="style_corrupt")
    path = _local_path(storage, key)
    if path is None:
        cached = os.path.join(token_cache_dir(), account_id, f"{token_id}-{digest[:16]}.safetensors")
        if not os.path.isfile(cached):
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".part")
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, cached)       # readers never see a partial file
        path = cached
    base_model = manifest.get("base_model") or {}
    return {"kind": DIFFUSION_KIND, "path": path, "trigger": manifest.get("placeholder") or f"<{token_id}>",
            "id": token_id, "version": manifest.get("version", FORMAT_VERSION),
            "base_style": manifest.get("base_style"), "base_model_id": base_model.get("fingerprint"),
            "params": dict(manifest.get("params") or {}), "manifest": manifest}


class TokenCache:
    """A small thread-safe LRU of loaded tokens, so a warm replica applies a token without touching storage."""

    def __init__(self, storage: ObjectStore, max_items: int = 64) -> None:
        self.storage, self.max_items = storage, max_items
        self._items: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, account_id: str, token_id: str) -> dict[str, Any]:
        key = (account_id, token_id)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        token = load_token(self.storage, account_id, token_id)
        with self._lock:
            self._items[key] = token
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return token

    def evict(self, account_id: str, token_id: str) -> None:
        with self._lock:
            self._items.pop((account_id, token_id), None)


def apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Reference trilinear application of an `[r, g, b]`-indexed LUT to an (H, W, 3) uint8 image."""
    n = lut.shape[0]
    x = image.reshape(-1, 3).astype(np.float32) * ((n - 1) / 255.0)
    i0 = np.clip(np.floor(x).astype(np.int64), 0, n - 2)
    f = x - i0
    out = np.zeros_like(x)
    for dr in (0, 1):
        wr = f[:, 0] if dr else 1 - f[:, 0]
        for dg in (0, 1):
            wg = f[:, 1] if dg else 1 - f[:, 1]
            for db in (0, 1):
                wb = f[:, 2] if db else 1 - f[:, 2]
                out += (wr * wg * wb)[:, None] * lut[i0[:, 0] + dr, i0[:, 1] + dg, i0[:, 2] + db]
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(image.shape)


def time_token_load(storage: ObjectStore, account_id: str, token_id: str, repeats: int = 20) -> dict[str, float]:
    """Cold (storage read + decode) vs warm (cache hit) load times in ms, for the benchmarks."""
    t0 = time.perf_counter()
    load_token(storage, account_id, token_id)
    cold = (time.perf_counter() - t0) * 1000
    cache = TokenCache(storage)
    cache.get(account_id, token_id)
    t0 = time.perf_counter()
    for _ in range(repeats):
        cache.get(account_id, token_id)
    warm = (time.perf_counter() - t0) * 1000 / repeats
    return {"cold_ms": cold, "warm_ms": warm}


def token_version(manifest: dict[str, Any]) -> str:
    """`<token_id>@<format version>-<first 8 hex of the token file's SHA-256>`: names the token and its exact content."""
    digest = str(manifest.get("sha256") or "")[:8]
    version = f"{manifest.get('token_id')}@{manifest.get('version', 1)}"
    return f"{version}-{digest}" if digest else version
