"""The style token artefact: id format, save/load round trip, account scoping, integrity, and that the engine
applies the baked LUT exactly as training's differentiable model does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avatar.contracts import STYLE_TOKEN_RE
from avatar.errors import NotFound
from avatar.store.storage import Storage
from avatar.tokens import (StyleToken, TokenCache, apply_lut, build_manifest, delete_token, examples_fingerprint,
                                 load_token, new_token_id, save_token)
from training.model import LutStyleModel


def _graded_model() -> LutStyleModel:
    model = LutStyleModel(lut_size=9, curve_knots=8)
    with torch.no_grad():
        model.lut_residual[0] += 0.1 * model.identity[2] ** 2     # red rises with blue
        model.lut_residual[2] -= 0.08 * model.identity[0]         # blue falls with red
        model.curve_logits[1] += torch.linspace(0, 0.5, 7)        # a tone curve on green
    return model


def _token(account: str = "acc_a") -> StyleToken:
    lut, curve = _graded_model().bake()
    manifest = build_manifest(new_token_id(), account, base_engine=("cpu", "1.0.0"), base_style="corporate_headshot",
                              fingerprint=examples_fingerprint(["b", "a"]), example_count=50,
                              metrics={"val_loss": 0.07}, lut_size=9, curve_knots=8)
    return StyleToken(manifest["token_id"], account, lut, curve, {"base_style": "corporate_headshot"}, manifest)


def test_new_token_ids_are_valid_and_unique():
    ids = {new_token_id() for _ in range(200)}
    assert len(ids) == 200 and all(STYLE_TOKEN_RE.match(i) for i in ids)


def test_fingerprint_ignores_order_but_not_content():
    assert examples_fingerprint(["x", "y", "z"]) == examples_fingerprint(["z", "x", "y"])
    assert examples_fingerprint(["x", "y"]) != examples_fingerprint(["x", "y", "z"])


def test_round_trip_and_manifest(tmp_path):
    storage, token = Storage(str(tmp_path)), _token()
    save_token(storage, token)
    loaded = load_token(storage, "acc_a", token.token_id)
    np.testing.assert_array_equal(loaded["lut"], token.lut)
    assert loaded["lut"].shape == (33, 33, 33, 3) and loaded["lut"].dtype == np.float32
    assert loaded["params"] == {"base_style": "corporate_headshot"}
    assert "curve" not in loaded and loaded["tone_curve"].shape == (3, 8)   # baked in, never applied twice
    m = json.loads(storage.get(f"styles/acc_a/{token.token_id}/manifest.json"))
    assert m["account_id"] == "acc_a" and m["base_engine"] == {"name": "cpu", "version": "1.0.0"}
    assert m["examples"]["fingerprint"] == examples_fingerprint(["a", "b"]) and m["created_at"]


def test_other_account_missing_and_corrupt_tokens_are_not_found(tmp_path):
    storage, token = Storage(str(tmp_path)), _token()
    save_token(storage, token)
    with pytest.raises(NotFound):
        load_token(storage, "acc_b", token.token_id)
    with pytest.raises(NotFound):
        load_token(storage, "acc_a", new_token_id())
    with pytest.raises(NotFound):
        load_token(storage, "acc_a", "../../etc")
    key = f"styles/acc_a/{token.token_id}/token.safetensors"
    blob = bytearray(storage.get(key))
    blob[-1] ^= 0xFF
    storage.put(key, bytes(blob))
    with pytest.raises(NotFound, match="corrupt"):
        load_token(storage, "acc_a", token.token_id)
    delete_token(storage, "acc_a", token.token_id)
    assert storage.list("styles/acc_a") == []


def test_cache_serves_warm_loads_without_storage(tmp_path):
    storage, token = Storage(str(tmp_path)), _token()
    save_token(storage, token)
    cache = TokenCache(storage, max_items=1)
    first = cache.get("acc_a", token.token_id)
    delete_token(storage, "acc_a", token.token_id)
    assert cache.get("acc_a", token.token_id) is first
    cache.evict("acc_a", token.token_id)
    with pytest.raises(NotFound):
        cache.get("acc_a", token.token_id)


def test_engine_applies_the_baked_model_like_training():
    from avatar.engines.cpu_style import apply_lut as engine_lut
    model = _graded_model()
    lut, _ = model.bake()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        trained = model(torch.from_numpy(rgb.astype(np.float32) / 255)).numpy()
    # baked on a 33-point grid: interpolation differs only a little from the exact model
    assert np.abs(engine_lut(rgb.astype(np.float32) / 255, lut) - trained).max() < 0.02
    assert np.abs(apply_lut(rgb, lut).astype(np.float32) / 255 - engine_lut(rgb / 255, lut)).max() <= 1 / 255 + 1e-6
    assert np.abs(apply_lut(rgb, lut).astype(int) - rgb).max() > 10        # the grade does change colours


def test_identity_token_leaves_the_base_style_unchanged():
    from avatar.engines.cpu_style import CpuStyleEngine
    from avatar.types import StyleSpec
    lut, _ = LutStyleModel(lut_size=5).bake(size=9)
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    t = np.linspace(0, 2 * np.pi, 468, endpoint=False)
    lm = np.stack([32 + 18 * np.cos(t), 30 + 24 * np.sin(t)], 1).astype(np.float32)
    engine = CpuStyleEngine()
    base = engine.apply(img, lm, StyleSpec("corporate_headshot", 0.8))
    custom = engine.apply(img, lm, StyleSpec("sty_identity01", 0.8, token={"lut": lut, "params": {}}))
    assert np.abs(base.astype(int) - custom).max() <= 1
