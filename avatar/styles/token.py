"""The custom style token: what style training produces and `CpuStyleEngine` applies as `StyleSpec.token`.

Stored under `styles/<account_id>/<token_id>/` in the service storage:
- `token.safetensors`: `lut` (N, N, N, 3) float32 in 0..1, indexed `[r, g, b]` (the full colour map, tone curve baked
  in, applied trilinearly), `curve` (3, K) float32 (the learnt per-channel tone curve on K evenly spaced knots, kept for
  inspection and re-training), and the engine parameter overrides as JSON metadata;
- `manifest.json`: id, format version, account, base engine and style, examples' fingerprint, metrics, creation time.
The tensors are written before the manifest, so a token whose manifest exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import secrets
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

FORMAT_VERSION = 1
TOKEN_FILE = "token.safetensors"
MANIFEST_FILE = "manifest.json"


class ObjectStore(Protocol):
    """The part of `avatar.storage.Storage` tokens need."""

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
    """The token as `StyleSpec.token` wants it. NotFound (404) when missing, incomplete or another account's."""
    return load_style_token(storage, account_id, token_id).as_spec_token()


def load_style_token(storage: ObjectStore, account_id: str, token_id: str) -> StyleToken:
    prefix = token_prefix(account_id, token_id)
    try:
        manifest = json.loads(storage.get(f"{prefix}/{MANIFEST_FILE}"))
        blob = storage.get(f"{prefix}/{TOKEN_FILE}")
    except (NotFound, FileNotFoundError):
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found") from None
    if manifest.get("account_id") != account_id or manifest.get("token_id") != token_id:
        raise NotFound(f"no style {token_id!r}", field="style", code="style_not_found")
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
