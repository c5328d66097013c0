"""Style training: example validation (nothing written on bad input), a real Ray Train run whose token moves outputs
towards the examples' look, resume after a worker failure, and the resource pre-check."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avatar.store.accounts import open_account_store
from avatar.tokens import load_token
from avatar.store.storage import Storage
from avatar.types import StyleSpec
from training.dataset import DatasetError, make_demo_examples

pytestmark = pytest.mark.timeout(420)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def examples_dir() -> Path:
    """50 teal-orange graded examples (varied crops, exposure, light) of packaged public-domain photos."""
    d = Path(tempfile.mkdtemp(prefix="sty-examples-"))
    make_demo_examples(d, count=50, seed=1)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture()
def env(tmp_path: Path):
    """A fresh storage root and account store with one account."""
    storage_uri = str(tmp_path / "storage")
    accounts_uri = f"sqlite:///{tmp_path / 'accounts.sqlite3'}"
    store = open_account_store(accounts_uri)
    account_id, _ = store.create_account("Acme Games")
    return {"storage": storage_uri, "accounts": accounts_uri, "store": store, "account": account_id}




def _files_under(root: str) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()] if Path(root).exists() else []


def _config(env: dict, images: str, **kw):
    from training.train_style import TrainConfig
    return TrainConfig(account_id=env["account"], images=images, storage_uri=env["storage"],
                       accounts_uri=env["accounts"], **kw)


# ---------------------------------------------------------------- bad inputs: clear errors, nothing written
def _copy_examples(src: Path, dst: Path, count: int) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.iterdir())
    for i in range(count):
        shutil.copy(files[i % len(files)], dst / f"img_{i:03d}.jpg")
    return dst


def _assert_nothing_written(env: dict) -> None:
    assert _files_under(env["storage"]) == []
    assert env["store"].list_styles(env["account"]) == []


def _expect_dataset_error(env: dict, images: Path) -> DatasetError:
    from training.jobs import StyleJobs
    from training.train_style import run_training
    with pytest.raises(DatasetError) as via_job:
        StyleJobs(env["storage"], env["accounts"]).submit(env["account"], str(images))
    with pytest.raises(DatasetError) as direct:
        run_training(_config(env, str(images)))
    assert via_job.value.message == direct.value.message
    assert direct.value.status == 422
    _assert_nothing_written(env)
    return direct.value


def test_49_images_is_too_few(env, examples_dir, tmp_path):
    err = _expect_dataset_error(env, _copy_examples(examples_dir, tmp_path / "few", 49))
    assert err.code == "too_few_examples" and "49 images" in err.message and "at least 50" in err.message


def test_201_images_is_too_many(env, examples_dir, tmp_path):
    err = _expect_dataset_error(env, _copy_examples(examples_dir, tmp_path / "many", 201))
    assert err.code == "too_many_examples" and "201" in err.message and "at most 200" in err.message


def test_corrupt_non_image_and_small_files_are_listed(env, examples_dir, tmp_path):
    images = _copy_examples(examples_dir, tmp_path / "bad", 50)
    good = (images / "img_000.jpg").read_bytes()
    (images / "img_007.jpg").write_bytes(good[: len(good) // 3])           # truncated JPEG
    (images / "notes.txt").write_text("not an image")
    Image.new("RGB", (120, 300)).save(images / "tiny.png")
    err = _expect_dataset_error(env, images)
    listed = {b["file"]: b["reason"] for b in err.extra["bad_files"]}
    assert set(listed) == {"img_007.jpg", "notes.txt", "tiny.png"}, listed
    assert "not a decodable image" in listed["notes.txt"] and "smaller than 200x200" in listed["tiny.png"]
    assert all(name in err.message for name in listed)


def test_parquet_manifest_with_a_missing_file(env, examples_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths = [str(p) for p in sorted(examples_dir.iterdir())] + [str(tmp_path / "gone.jpg")]
    pq.write_table(pa.table({"image_path": paths}), tmp_path / "manifest.parquet")
    err = _expect_dataset_error(env, tmp_path / "manifest.parquet")
    assert [b["file"] for b in err.extra["bad_files"]] == [str(tmp_path / "gone.jpg")]


def test_parquet_manifest_validates(examples_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from training.dataset import load_examples
    names = sorted(p.name for p in examples_dir.iterdir())
    pq.write_table(pa.table({"path": names}), examples_dir / "m.parquet")
    try:
        by_manifest = load_examples(str(examples_dir / "m.parquet"), size=32)
    finally:
        (examples_dir / "m.parquet").unlink()
    by_dir = load_examples(str(examples_dir), size=32)
    assert by_manifest.fingerprint == by_dir.fingerprint and len(by_dir.names) == 50


# ---------------------------------------------------------------- the real run
def _face_landmarks(size: int) -> np.ndarray:
    """Deterministic stand-in landmarks (an ellipse of 468 points); both styles compared get the same ones."""
    t = np.linspace(0, 2 * np.pi, 468, endpoint=False)
    return np.stack([size / 2 + 0.3 * size * np.cos(t), size * 0.45 + 0.38 * size * np.sin(t)], 1).astype(np.float32)


def _lab_stats(images: list[np.ndarray]) -> np.ndarray:
    from skimage.color import rgb2lab
    lab = np.concatenate([rgb2lab(i).reshape(-1, 3) for i in images])
    return np.concatenate([lab.mean(0), lab.std(0)])


def test_training_job_survives_a_worker_failure_and_learns_the_examples_look(ray_session, env, examples_dir,
                                                                              tmp_path):
    """Through the job registry (detached driver, 2 Ray Train workers), with a worker failing once at epoch 2: the
    worker group restarts from epoch 1's checkpoint (not from scratch) and the job still succeeds; the token's outputs
    on held-out photos are at least 30% closer to the examples' Lab colour statistics than the built-in style's."""
    import skimage.data as data
    from avatar.engines.cpu_style import CpuStyleEngine
    from training.jobs import StyleJobs

    flag = tmp_path / "fault-fired"
    jobs = StyleJobs(env["storage"], env["accounts"], epochs=6, fail_once_at_epoch=2, fail_flag=str(flag))
    submitted = jobs.submit(env["account"], str(examples_dir))
    assert submitted.state == "queued" and submitted.token_id
    assert StyleJobs(env["storage"], env["accounts"]).status("acc_other", submitted.job_id) is None
    final = jobs.wait(env["account"], submitted.job_id, timeout_s=360)
    assert final.state == "succeeded", final.error
    assert flag.read_text() == "2"                                  # the failure did happen
    assert final.resumed_from == 1                                  # restarted from epoch 1's checkpoint, not 0
    assert final.epoch == 6 and final.epochs == 6 and final.eta_s == 0.0 and final.loss is not None
    assert [j.job_id for j in jobs.list(env["account"])] == [submitted.job_id]

    record = env["store"].get_style(env["account"], final.token_id)
    assert record is not None and record.manifest["examples"]["count"] == 50
    assert record.manifest["metrics"]["val_loss"] < 0.75 * record.manifest["metrics"]["identity_loss"]
    assert not (Path(env["storage"]) / "style-runs" / f"style-{env['account']}-{submitted.job_id}").exists()

    token = load_token(Storage(env["storage"]), env["account"], final.token_id)
    engine = CpuStyleEngine()
    held_out = [np.ascontiguousarray(data.astronaut()[::2, ::2]), np.ascontiguousarray(data.rocket()[::2, ::2])]
    builtin = [engine.apply(p, _face_landmarks(p.shape[0]), StyleSpec("corporate_headshot", 0.8)) for p in held_out]
    custom = [engine.apply(p, _face_landmarks(p.shape[0]), StyleSpec(final.token_id, 0.8, token=token))
              for p in held_out]
    target = _lab_stats(_example_images(examples_dir))
    d_builtin = np.linalg.norm(_lab_stats(builtin) - target)
    d_custom = np.linalg.norm(_lab_stats(custom) - target)
    assert d_custom < 0.7 * d_builtin, (d_custom, d_builtin)


def _example_images(d: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(d.iterdir())]


def test_unplaceable_workers_fail_fast(ray_session, env, examples_dir):
    from training.train_style import ResourcesUnavailable, run_training
    with pytest.raises(ResourcesUnavailable, match="8 workers"):
        run_training(_config(env, str(examples_dir), num_workers=8))
    assert env["store"].list_styles(env["account"]) == []
    assert _files_under(env["storage"]) == []
