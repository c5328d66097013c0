"""Usage rows survive a crash of the writer: each acknowledged row is in the Parquet log exactly once after a SIGKILL
and the next writer's recovery, including a crash between the Parquet write and the journal's deletion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from avatar.store import usage as usage_mod
from avatar.store.usage import UsageLog, UsageRecord

pytestmark = pytest.mark.timeout(120)

WRITER = textwrap.dedent("""
    import sys, time
    from avatar.store.usage import UsageLog, UsageRecord
    log = UsageLog(sys.argv[1], journal_dir=sys.argv[2], max_rows=7)
    for i in range(100000):
        rec = UsageRecord(f"req_{i:06d}", "acc", "anime_character", "discord", True, True, True, 1, 0.9, 0.01,
                          0.8, 12.5, i % 2 == 0, outcome="delivered" if i % 3 else "no_face_detected")
        log.append(rec)                          # returns once the row is durable: the request may be answered
        print(rec.request_id, flush=True)
        if i % 5 == 0:
            log.flush()                          # compactions happen while the crash can come at any point
""")


def _rows(root: Path) -> list[dict]:
    if not any(root.rglob("*.parquet")):
        return []
    return ds.dataset(str(root), format="parquet", partitioning="hive").to_table().to_pylist()


def test_rows_acknowledged_before_a_sigkill_are_logged_exactly_once(tmp_path):
    root, journal = tmp_path / "usage", tmp_path / "journal"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(journal)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    acknowledged = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    assert len(acknowledged) >= 60, "the writer did not start"
    assert list(journal.glob("*.jsonl")), "the killed writer left no journal: nothing was pending at the kill"

    log = UsageLog(str(root), journal_dir=journal)   # the next writer on the node recovers the dead one's segments
    log.close()
    ids = [r["request_id"] for r in _rows(root)]
    assert len(ids) == len(set(ids)), "a row was written twice"
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged rows were lost: {sorted(missing)[:5]}"
    assert log.recovered > 0 and not list(journal.glob("*.jsonl"))


def test_a_crash_between_compaction_and_deletion_does_not_duplicate(tmp_path, monkeypatch):
    root, journal = tmp_path / "usage", tmp_path / "journal"
    log = UsageLog(str(root), journal_dir=journal)
    for i in range(5):
        log.append(UsageRecord(f"r{i}", "acc", "s", "p", True, True, True, 1, 0.9, 0.0, 0.8, 1.0, True))
    real_unlink = Path.unlink

    def crash(self, *a, **kw):
        if self.suffix == ".jsonl":
            raise KeyboardInterrupt("process dies before the segment is deleted")
        return real_unlink(self, *a, **kw)
    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        log.flush()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert len(_rows(root)) == 5
    log.journal.current.close()     # the dead process's locks are gone
    log._closed = True
    recovered = UsageLog(str(root), journal_dir=journal)
    recovered.close()
    ids = sorted(r["request_id"] for r in _rows(root))
    assert ids == [f"r{i}" for i in range(5)]


def test_a_live_writers_segment_is_not_taken(tmp_path):
    root, journal = tmp_path / "usage", tmp_path / "journal"
    live = UsageLog(str(root), journal_dir=journal)
    live.append(UsageRecord("r1", "acc", "s", "p", True, True, True, 1, 0.9, 0.0, 0.8, 1.0, True))
    other = UsageLog(str(root), journal_dir=journal)
    assert other.recovered == 0 and _rows(root) == []    # still buffered by its live writer, not stolen
    live.close()
    other.close()
    assert [r["request_id"] for r in _rows(root)] == ["r1"]
    assert usage_mod.Journal is not None
