"""Usage log: rows written as Parquet per time window, read back with pyarrow.dataset."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pyarrow.dataset as ds
import pytest

from avatar.gate import GateResult
from avatar.store.usage import UsageLog, UsageRecord

T0 = datetime(2026, 3, 4, 10, 15, tzinfo=timezone.utc)


def record(i: int, at: datetime, billable: bool = True) -> UsageRecord:
    return UsageRecord(request_id=f"r{i}", account=f"acct{i % 3}", style="anime_character", platform="discord",
                       face_present=True, likeness_ok=billable, content_safe=True, attempts=1 + i % 3,
                       likeness=0.5 + i / 100, nsfw=0.01 * (i % 5), input_quality=0.8, latency_ms=100.0 + i,
                       billable=billable, created_at=at)


def read(root) -> list[dict]:
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda r: r["request_id"])


def parquet_files(root) -> list:
    return sorted(p for p in root.rglob("*.parquet"))


def test_rows_read_back_with_their_values(tmp_path):
    written = [record(i, T0 + timedelta(seconds=i), billable=i % 2 == 0) for i in range(7)]
    with UsageLog(str(tmp_path)) as log:
        for r in written:
            log.append(r)
    rows = read(tmp_path)
    assert [r["request_id"] for r in rows] == sorted(r.request_id for r in written)
    by_id = {r.request_id: r for r in written}
    for row in rows:
        src = by_id[row["request_id"]]
        assert row["account"] == src.account and row["attempts"] == src.attempts
        assert row["billable"] == src.billable and row["likeness_ok"] == src.likeness_ok
        assert row["likeness"] == pytest.approx(src.likeness, abs=1e-6)
        assert row["latency_ms"] == pytest.approx(src.latency_ms)
        assert row["created_at"] == src.created_at


def test_one_file_per_hour_window(tmp_path):
    hours = [T0, T0 + timedelta(minutes=20), T0 + timedelta(hours=1), T0 + timedelta(hours=2, minutes=5)]
    log = UsageLog(str(tmp_path))
    for i, at in enumerate(hours):
        log.append(record(i, at))
    log.close()
    files = parquet_files(tmp_path)
    assert len(files) == 3
    assert {f.parent.name for f in files} == {"hour=10", "hour=11", "hour=12"}
    assert len(read(tmp_path)) == len(hours)


def test_window_change_flushes_the_previous_window(tmp_path):
    log = UsageLog(str(tmp_path))
    log.append(record(0, T0))
    assert parquet_files(tmp_path) == []
    log.append(record(1, T0 + timedelta(hours=1)))
    assert len(parquet_files(tmp_path)) == 1
    log.close()


def test_full_buffer_is_written_without_waiting(tmp_path):
    log = UsageLog(str(tmp_path), max_rows=3)
    for i in range(7):
        log.append(record(i, T0))
    assert len(parquet_files(tmp_path)) == 2
    log.close()
    assert len(read(tmp_path)) == 7


def test_concurrent_appends_lose_nothing(tmp_path):
    log = UsageLog(str(tmp_path), max_rows=50)

    def worker(base: int) -> None:
        for i in range(100):
            log.append(record(base + i, T0 + timedelta(seconds=i)))

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    ids = [r["request_id"] for r in read(tmp_path)]
    assert len(ids) == 400 and len(set(ids)) == 400


def test_record_from_gate_result_is_billable_only_when_passed():
    failed = GateResult(passed=False, checks={"face_present": True, "likeness": False, "content_safety": True},
                        likeness=0.41, nsfw=0.02, face_score=0.9)
    rec = UsageRecord.from_gate("r1", "a", "anime_character", "discord", failed, attempts=3, input_quality=0.7,
                                latency_ms=900.0)
    assert not rec.billable and not rec.likeness_ok and rec.face_present and rec.attempts == 3


def test_closed_log_refuses_rows(tmp_path):
    log = UsageLog(str(tmp_path))
    log.close()
    with pytest.raises(RuntimeError):
        log.append(record(0, T0))


@pytest.mark.parametrize("offset", [timedelta(hours=5, minutes=30), timedelta(hours=-5), timedelta(0)])
def test_reads_take_bounds_in_any_utc_offset_as_instants(tmp_path, offset):
    """Bounds in another offset select the same instants, across the UTC date boundary of the log's partitions."""
    from avatar.store.usage import read_usage
    late = datetime(2026, 3, 4, 22, 0, tzinfo=timezone.utc)       # partition date=2026-03-04
    early = datetime(2026, 3, 5, 1, 0, tzinfo=timezone.utc)       # partition date=2026-03-05
    with UsageLog(str(tmp_path)) as log:
        log.append(record(0, late))
        log.append(record(3, early))
    zone = timezone(offset)
    window = [r["request_id"] for r in read_usage(str(tmp_path), start=(late - timedelta(minutes=1)).astimezone(zone),
                                                  end=(early + timedelta(minutes=1)).astimezone(zone)).to_pylist()]
    assert window == ["r0", "r3"]
    assert [r["request_id"] for r in read_usage(str(tmp_path), start=early.astimezone(zone)).to_pylist()] == ["r3"]
    assert [r["request_id"] for r in read_usage(str(tmp_path), end=early.astimezone(zone)).to_pylist()] == ["r0"]
    naive = read_usage(str(tmp_path), start=datetime(2026, 3, 4, 21, 0), end=datetime(2026, 3, 4, 23, 0))
    assert [r["request_id"] for r in naive.to_pylist()] == ["r0"]                 # naive bounds are UTC
