"""The storage layer's S3 path against a real S3-compatible server (moto's server mode on loopback), through
`pyarrow.fs` with an endpoint override: outputs, style tokens, cached inputs and the usage log, as a cluster whose
nodes share a bucket uses them. Credentials come from the AWS_* environment, as a pod gets them from its Secret."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.fs as pafs
import pytest

from avatar.clock import ManualClock
from avatar.errors import NotFound
from avatar.store.input_cache import InputCache
from avatar.store.storage import Storage
from avatar.store.usage import UsageLog, UsageRecord, decline_rates, read_usage
from avatar.tokens import StyleToken, build_manifest, delete_token, examples_fingerprint, load_token, new_token_id, \
    save_token

T0 = datetime(2026, 3, 4, 22, 40, tzinfo=timezone.utc)


@pytest.fixture()
def bucket(s3_server) -> str:
    return s3_server.new_bucket()


@pytest.fixture()
def storage(s3_server, bucket) -> Storage:
    return Storage(s3_server.uri(bucket, "storage"))


def test_objects_round_trip_through_the_s3_server(storage, s3_server, bucket):
    storage.put("outputs/acc_a/req_1/avatar.png", b"\x89PNG fake")
    storage.put("outputs/acc_a/req_1/thumb.png", b"thumb")
    storage.put("outputs/acc_b/req_2/avatar.png", b"other")
    assert storage.get("outputs/acc_a/req_1/avatar.png") == b"\x89PNG fake"
    assert storage.exists("outputs/acc_a/req_1/thumb.png") and not storage.exists("outputs/acc_a/nothing.png")
    assert abs(storage.modified("outputs/acc_a/req_1/avatar.png") - time.time()) < 120
    assert storage.list("outputs/acc_a") == ["outputs/acc_a/req_1/avatar.png", "outputs/acc_a/req_1/thumb.png"]
    # the objects are really in the bucket, under the prefix, and no temporary name is left behind
    listed = s3_server.filesystem().get_file_info(pafs.FileSelector(bucket, recursive=True))
    files = sorted(i.path for i in listed if i.type == pafs.FileType.File)
    assert files == [f"{bucket}/storage/outputs/acc_a/req_1/avatar.png", f"{bucket}/storage/outputs/acc_a/req_1/thumb.png",
                     f"{bucket}/storage/outputs/acc_b/req_2/avatar.png"]
    storage.delete("outputs/acc_a/req_1/thumb.png")
    storage.delete("outputs/acc_a/req_1/thumb.png")          # deleting twice is fine
    with pytest.raises(NotFound):
        storage.get("outputs/acc_a/req_1/thumb.png")
    for bad in ("", "/etc/passwd", "outputs/../../x"):
        with pytest.raises(NotFound):
            storage.get(bad)


def test_a_second_node_reads_what_the_first_wrote(s3_server, bucket):
    """Two Storage objects (two nodes) over one bucket: no local state in between."""
    Storage(s3_server.uri(bucket, "shared")).put("a/b.bin", b"from node 1")
    assert Storage(s3_server.uri(bucket, "shared")).get("a/b.bin") == b"from node 1"


def test_style_tokens_on_s3(storage):
    rng = np.random.default_rng(0)
    lut = rng.random((5, 5, 5, 3), dtype=np.float32)
    curve = np.tile(np.linspace(0, 1, 4, dtype=np.float32), (3, 1))
    token_id = new_token_id()
    manifest = build_manifest(token_id, "acc_a", base_engine=("cpu", "1.0.0"), base_style="corporate_headshot",
                              fingerprint=examples_fingerprint(["x"]), example_count=50, metrics={"val_loss": 0.1},
                              lut_size=5, curve_knots=4)
    save_token(storage, StyleToken(token_id, "acc_a", lut, curve, {"base_style": "corporate_headshot"}, manifest))
    loaded = load_token(storage, "acc_a", token_id)
    assert np.allclose(loaded["lut"], lut) and loaded["params"] == {"base_style": "corporate_headshot"}
    with pytest.raises(NotFound):
        load_token(storage, "acc_b", token_id)               # another account's token is a missing one
    delete_token(storage, "acc_a", token_id)
    with pytest.raises(NotFound):
        load_token(storage, "acc_a", token_id)


def test_cached_inputs_on_s3(storage):
    cache = InputCache(storage, ttl_s=3600, sweep_every_s=0)
    input_id, expires = cache.put("acc_a", b"photo bytes")
    assert cache.get("acc_a", input_id) == b"photo bytes" and expires > time.time()
    with pytest.raises(NotFound):
        cache.get("acc_b", input_id)
    later = ManualClock()
    later.advance(3601)                                      # the same objects an hour and a second later
    expired = InputCache(storage, ttl_s=3600, sweep_every_s=0, clock=later)
    with pytest.raises(NotFound):
        expired.get("acc_a", input_id)
    assert expired.maybe_sweep() == 1 and storage.list("inputs") == []


def _row(i: int, account: str, at: datetime, billable: bool = True) -> UsageRecord:
    return UsageRecord(f"req_{i:03d}", account, "cartoon", "slack", True, billable, True, 1, 0.6, 0.0, 0.8, 100.0,
                       billable, created_at=at, credits=2 if billable else 0)


def test_usage_log_on_s3(s3_server, bucket):
    uri = s3_server.uri(bucket, "usage")
    with UsageLog(uri) as log:                                # two writers (two ingress replicas), two hours
        for i in range(6):
            log.append(_row(i, "acc_a" if i % 2 else "acc_b", T0 + timedelta(minutes=15 * i), billable=i != 3))
    with UsageLog(uri) as log:
        log.append(UsageRecord.user_feedback("req_001", "acc_a", "cartoon", "slack", "declined", "too cartoonish"))
        log.append(UsageRecord.user_feedback("req_005", "acc_a", "cartoon", "slack", "accepted", None))
    mine = read_usage(uri, account="acc_a", start=T0, end=T0 + timedelta(days=1)).to_pylist()
    assert [(r["request_id"], r["credits"]) for r in mine] == [("req_001", 2), ("req_003", 0), ("req_005", 2)]
    window = read_usage(uri, start=T0 + timedelta(minutes=30), end=T0 + timedelta(minutes=60)).to_pylist()
    assert [r["request_id"] for r in window] == ["req_002", "req_003"]
    rates = decline_rates(uri)
    assert rates["by_style"]["cartoon"] == {"accepted": 1, "declined": 1, "decline_rate": 0.5}


def test_usage_files_written_before_new_columns_still_read(tmp_path):
    """A log written by an older release (no credits / external_id / feedback columns) reads them as null."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from avatar.store.usage import SCHEMA
    old = pa.schema([f for f in SCHEMA if f.name not in ("credits", "external_id", "feedback", "reason")])
    folder = tmp_path / "date=2026-03-04" / "hour=22"
    folder.mkdir(parents=True)
    row = {f.name: getattr(_row(1, "acc_a", T0), f.name) for f in old}
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "part-old.parquet")
    rows = read_usage(str(tmp_path), account="acc_a").to_pylist()
    assert len(rows) == 1 and rows[0]["credits"] is None and rows[0]["request_id"] == "req_001"


def test_batch_zip_and_contact_sheet_on_s3(storage):
    """What the job runner writes when a batch finishes (`batches/<job>/...`), through the same Storage calls."""
    import io
    import zipfile

    from PIL import Image

    from avatar.deliverables import Member, avatars_zip, contact_sheet
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, format="PNG")
    members = [Member("emp-001", buf.getvalue()), Member("emp-002", None, "no_face_detected")]
    storage.put("batches/job_1/avatars.zip", avatars_zip(members))
    storage.put("batches/job_1/contact_sheet.png", contact_sheet(members, tile=64))
    with zipfile.ZipFile(io.BytesIO(storage.get("batches/job_1/avatars.zip"))) as archive:
        assert archive.namelist() == ["emp-001.png"] and archive.read("emp-001.png") == buf.getvalue()
    sheet = Image.open(io.BytesIO(storage.get("batches/job_1/contact_sheet.png")))
    assert sheet.width >= 128 and storage.list("batches/job_1") == ["batches/job_1/avatars.zip",
                                                                   "batches/job_1/contact_sheet.png"]
