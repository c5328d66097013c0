"""Diffusion custom styles: a textual-inversion job on the tiny model through the job registry (one Ray Train worker,
the runner's multi-worker path being test_training's; a worker failure resumed from the last checkpoint), the token
stored, registered, loaded by `load_token` into the diffusion engine and changing its output; isolation between
accounts; the artefact format on non-local storage."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import tiny_diffusion  # noqa: E402

from avatar.errors import InvalidRequest, ModelUnavailable, NotFound  # noqa: E402
from avatar.store.storage import Storage  # noqa: E402
from avatar.types import StyleSpec  # noqa: E402

pytestmark = pytest.mark.timeout(240)
SIZE = 64


@pytest.fixture(scope="module")
def root() -> Path:
    d = Path(tempfile.mkdtemp(prefix="dtok-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def book(root) -> dict:
    base = tiny_diffusion.build_sd(root / "sd-tiny")
    return {"custom": "plain", "recipes": {
        "plain": {"base_model": str(base), "steps": 2, "guidance_scale": 3.0, "prompt": "a portrait photo {token}"}}}


@pytest.fixture(scope="module")
def examples_dir(root) -> Path:
    """50 striped magenta/cyan 200x200 examples (the validator's minimum side), shifted and noised per image."""
    out = root / "examples"
    out.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:200]
    for i in range(50):
        stripes = (((xx + yy + 7 * i) // 20) % 2)[..., None]
        img = np.where(stripes, [230, 40, 200], [20, 200, 230]) + rng.integers(-20, 20, (200, 200, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / f"example_{i:02d}.png")
    return out


@pytest.fixture(scope="module")
def env(root) -> dict:
    from avatar.store.accounts import open_account_store
    accounts_uri = f"sqlite:///{root / 'accounts.sqlite3'}"
    store = open_account_store(accounts_uri)
    account, _ = store.create_account("Acme Games")
    other, _ = store.create_account("Other Corp")
    return {"storage": str(root / "storage"), "accounts": accounts_uri, "store": store, "account": account,
            "other": other}




@pytest.fixture(scope="module")
def engine(book):
    from avatar.engines.diffusion.engine import DiffusionStyleEngine
    return DiffusionStyleEngine(book, warmup=False, token_cache_size=2)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.stack([200 * xx + 30, 160 * yy + 40, 120 + 60 * xx * yy], -1)
    img[(xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08] = (225, 180, 150)
    return img.astype(np.uint8)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


TRAINING = {"engine": "diffusion", "epochs": 2, "steps_per_epoch": 12, "batch_size": 4, "image_size": 32,
            "lr": 0.05, "num_workers": 1, "cpus_per_worker": 1.0}


@pytest.fixture(scope="module")
def trained(ray_session, env, book, examples_dir, root):
    """One job through `StyleJobs` (detached driver, 1 worker); rank 0 fails once at epoch 1 and the restarted
    worker group resumes from epoch 0's checkpoint."""
    from training.jobs import StyleJobs
    jobs = StyleJobs(env["storage"], env["accounts"], recipes=book, lut_size=9)   # lut_size: a CPU-only default
    flag = root / "fault-fired"
    submitted = jobs.submit(env["account"], str(examples_dir), base_style="plain", fail_once_at_epoch=1,
                            fail_flag=str(flag), **TRAINING)
    assert submitted.state == "queued" and submitted.token_id
    final = jobs.wait(env["account"], submitted.job_id, timeout_s=200)
    return {"submitted": submitted, "final": final, "flag": flag, "jobs": jobs}


def test_job_trains_checkpoints_resumes_and_registers(trained, env):
    final = trained["final"]
    assert final.state == "succeeded", final.error
    assert trained["flag"].read_text() == "1"                        # the failure did happen
    assert final.resumed_from == 0                                  # resumed from epoch 0's checkpoint
    assert final.epoch == 2 and final.epochs == 2 and final.eta_s == 0.0 and final.examples == 50
    assert final.loss is not None and final.val_loss is not None
    assert trained["jobs"].status(env["other"], final.job_id) is None
    record = env["store"].get_style(env["account"], final.token_id)
    assert record is not None and env["store"].get_style(env["other"], final.token_id) is None
    m = record.manifest
    assert m["kind"] == "textual_inversion" and m["placeholder"] == f"<{final.token_id}>"
    assert m["base_style"] == "plain" and m["base_model"]["family"] == "sd"
    assert m["base_model"]["fingerprint"].startswith("sd-tiny@") and m["base_model"]["embedding_dim"] == 32
    assert m["examples"]["count"] == 50 and len(m["examples"]["fingerprint"]) == 64
    assert m["metrics"]["resumed_from"] == 0 and m["training"]["workers"] == 1
    # the learnt word explains the examples better than the word it started from (fixed noise and timesteps)
    assert m["metrics"]["val_loss"] < m["metrics"]["init_loss"]
    assert m["metrics"]["vector_norm"] > 2 * m["metrics"]["init_norm"]
    run_dir = Path(env["storage"]) / "style-runs" / f"dstyle-{env['account']}-{final.job_id}"
    assert not run_dir.exists()                                     # checkpoints removed once published


def test_token_loads_into_the_engine_and_changes_its_output(trained, env, engine, face):
    from avatar.tokens import load_token
    token_id = trained["final"].token_id
    token = load_token(Storage(env["storage"]), env["account"], token_id)
    assert token["kind"] == "textual_inversion" and token["trigger"] == f"<{token_id}>"
    assert Path(token["path"]).is_file() and token["id"] == token_id and token["base_style"] == "plain"
    assert token["base_model_id"] == engine.model_id                # trained on the base the engine serves
    plain = engine.apply(face, None, StyleSpec(token_id, 0.6))       # no token: the custom recipe as is
    styled = engine.apply(face, None, StyleSpec(token_id, 0.6, token=token))
    assert styled.shape == face.shape and mad(plain, styled) > 0.5
    assert token["trigger"] in engine._recipe_base["plain"].pipe.tokenizer.get_vocab()
    assert np.array_equal(styled, engine.apply(face, None, StyleSpec(token_id, 0.6, token=token)))
    # the learnt vector itself matters: the same word with its starting vector renders differently
    untrained = _untrained_copy(engine, token, Path(env["storage"]).parent / "untrained.safetensors")
    assert mad(styled, engine.apply(face, None, StyleSpec(token_id, 0.6, token=untrained))) > 0.1


def _untrained_copy(engine, token: dict, path: Path) -> dict:
    from safetensors.torch import save_file
    pipe = engine._recipe_base["plain"].pipe
    ids = pipe.tokenizer("style", add_special_tokens=False).input_ids
    init = pipe.text_encoder.get_input_embeddings().weight[ids].mean(0).detach().clone()
    trigger = token["trigger"].replace("<sty_", "<sty_u")
    save_file({trigger: init}, str(path))
    return {"kind": "textual_inversion", "path": str(path), "trigger": trigger, "id": "sty_untrained"}


def test_other_accounts_cannot_load_it(trained, env):
    from avatar.tokens import load_token
    storage, token_id = Storage(env["storage"]), trained["final"].token_id
    with pytest.raises(NotFound) as err:
        load_token(storage, env["other"], token_id)
    assert err.value.code == "style_not_found"
    # a copy under the other account's prefix is refused too: the manifest names its owner
    src = Path(env["storage"]) / "styles" / env["account"] / token_id
    shutil.copytree(src, Path(env["storage"]) / "styles" / env["other"] / token_id)
    with pytest.raises(NotFound):
        load_token(storage, env["other"], token_id)


def test_non_local_storage_copies_the_embedding_and_checks_it(tmp_path, monkeypatch):
    from avatar.tokens import (DiffusionToken, build_diffusion_manifest, delete_token, load_token,
                                     save_diffusion_token)

    class MemoryStore(dict):
        """An object store without a local file system (like s3://)."""

        def put(self, key, data):
            self[key] = data

        def get(self, key):
            if key not in self:
                raise NotFound(key)
            return self[key]

        def delete(self, key):
            self.pop(key, None)

        def exists(self, key):
            return key in self

    monkeypatch.setenv("AVATAR_TOKEN_CACHE_DIR", str(tmp_path / "cache"))
    store, token_id = MemoryStore(), "sty_" + "A" * 22
    vector = np.linspace(-1, 1, 32, dtype=np.float32)
    manifest = build_diffusion_manifest(token_id, "acc_1", placeholder=f"<{token_id}>", base_style="plain",
                                        base_model={"ref": "m", "family": "sd", "fingerprint": "m@1"},
                                        fingerprint="f" * 64, example_count=50, metrics={"loss": 0.5})
    save_diffusion_token(store, DiffusionToken(token_id, "acc_1", f"<{token_id}>", vector, manifest))
    keys = sorted(store)
    assert keys == [f"styles/acc_1/{token_id}/embedding.safetensors", f"styles/acc_1/{token_id}/manifest.json"]
    token = load_token(store, "acc_1", token_id)
    assert Path(token["path"]).is_relative_to(tmp_path / "cache") and token["base_model_id"] == "m@1"
    from safetensors.numpy import load_file
    assert np.array_equal(load_file(token["path"])[f"<{token_id}>"], vector)
    assert json.loads(store[keys[1]])["sha256"] in {token["manifest"]["sha256"]}
    store[keys[0]] = store[keys[0]][:-4] + b"\0\0\0\0"                # corrupted in storage
    with pytest.raises(NotFound) as err:
        load_token(store, "acc_1", token_id)
    assert err.value.code == "style_corrupt"
    delete_token(store, "acc_1", token_id)
    assert not store


def test_bad_requests_fail_before_anything_starts(env, book, examples_dir):
    from training.jobs import StyleJobs
    jobs = StyleJobs(env["storage"], env["accounts"])
    before = sorted(Path(env["storage"]).rglob("*")) if Path(env["storage"]).exists() else []
    with pytest.raises(InvalidRequest, match="unknown training engine"):
        jobs.submit(env["account"], str(examples_dir), engine="gan")
    with pytest.raises(InvalidRequest, match="no diffusion recipe 'nope'"):
        jobs.submit(env["account"], str(examples_dir), engine="diffusion", recipes=book, base_style="nope")
    sdxl = {"plain": {**book["recipes"]["plain"], "family": "sdxl"}}
    with pytest.raises(ModelUnavailable, match="SD 1.x/2.x"):
        jobs.submit(env["account"], str(examples_dir), engine="diffusion", recipes=sdxl)
    missing = {"plain": {**book["recipes"]["plain"], "base_model": str(examples_dir / "no-model")}}
    with pytest.raises(ModelUnavailable, match="not found"):
        jobs.submit(env["account"], str(examples_dir), engine="diffusion", recipes=missing)
    after = sorted(Path(env["storage"]).rglob("*")) if Path(env["storage"]).exists() else []
    assert [p for p in after if "style-jobs" in str(p) and p not in before] == []


def test_command_line_arguments():
    from training.train_diffusion_style import parse_args
    cfg = parse_args(["--account", "acc_1", "--images", "ex/", "--recipes", "configs/diffusion.yaml", "--style",
                      "editorial_portrait", "--gpu", "--workers", "4", "--epochs", "6"])
    assert cfg.recipes == "configs/diffusion.yaml" and cfg.base_style == "editorial_portrait"
    assert cfg.use_gpu and cfg.num_workers == 4 and cfg.epochs == 6 and cfg.image_size == 512
    assert cfg.placeholder == f"<{cfg.token_id}>" and cfg.engine == "diffusion"
