"""Usage log: one row per avatar request, the record billing reads (platforms pay only for `billable` rows).

Rows are buffered in memory and written as Parquet, one file per time window (hourly by default) under
`<root>/date=YYYY-MM-DD/hour=HH/part-<...>.parquet`, through pyarrow.fs so the root may be a local directory or an
`s3://` / `gs://` URI. Each flush writes a new file (object stores have no append). Read it back with
`pyarrow.dataset.dataset(root, format="parquet", partitioning="hive")`.

With a journal directory (node-local disk), every row is first written and fsynced to a journal segment
(`avatar.store.journal`) before `append` returns, so a request is answered only once its row is durable. A flush
compacts the sealed segment into Parquet files named after the segment, then deletes it; a segment whose writer
died is compacted by the next log opened on that node (`recover`). Because the files of a segment are named
deterministically and hold exactly its rows, compacting a segment twice rewrites the same files: every row lands in
the log exactly once, even when a crash falls between the Parquet write and the segment's deletion.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from avatar.store.journal import Journal, Segment

SCHEMA = pa.schema([
    ("request_id", pa.string()), ("account", pa.string()), ("style", pa.string()), ("platform", pa.string()),
    ("face_present", pa.bool_()), ("likeness_ok", pa.bool_()), ("content_safe", pa.bool_()),
    ("attempts", pa.int32()), ("likeness", pa.float32()), ("nsfw", pa.float32()),
    ("input_quality", pa.float32()), ("latency_ms", pa.float32()), ("billable", pa.bool_()),
    ("created_at", pa.timestamp("ms", tz="UTC")), ("outcome", pa.string()),
    ("credits", pa.int64()), ("external_id", pa.string()), ("feedback", pa.string()), ("reason", pa.string()),
])
FEEDBACK = "feedback"   # the outcome of a feedback row: the user kept (accepted) or declined a delivered avatar


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class UsageRecord:
    request_id: str
    account: str
    style: str
    platform: str
    face_present: bool
    likeness_ok: bool
    content_safe: bool
    attempts: int
    likeness: float
    nsfw: float
    input_quality: float
    latency_ms: float
    billable: bool
    created_at: datetime = field(default_factory=_now)
    outcome: str = "delivered"     # "delivered", "feedback", or the error code of a refused / failed request
    credits: int = 0               # credits charged for it (0: unbilled, refused, covered by a seat, or no credits)
    external_id: str | None = None
    feedback: str | None = None    # feedback rows: "accepted" or "declined"
    reason: str | None = None

    @classmethod
    def refused(cls, request_id: str, account: str, style: str, platform: str, code: str, input_quality: float,
                latency_ms: float) -> UsageRecord:
        """A request that ended before an avatar existed (bad input, no face, face too small, failure): never billed."""
        return cls(request_id, account, style, platform, False, False, False, 0, 0.0, 0.0, float(input_quality),
                   float(latency_ms), False, outcome=code)

    @classmethod
    def user_feedback(cls, request_id: str, account: str, style: str, platform: str, verdict: str,
                      reason: str | None) -> UsageRecord:
        """The platform's report on a delivered avatar: a row of its own, so the log gives decline rates."""
        return cls(request_id, account, style, platform, True, True, True, 0, 0.0, 0.0, 0.0, 0.0, False,
                   outcome=FEEDBACK, feedback=verdict, reason=reason)

    @classmethod
    def from_gate(cls, request_id: str, account: str, style: str, platform: str, result, attempts: int,
                  input_quality: float, latency_ms: float, created_at: datetime | None = None) -> UsageRecord:
        """A record from the returned attempt's GateResult: billable exactly when it passed the gate."""
        return cls(request_id, account, style, platform, bool(result.checks.get("face_present")),
                   bool(result.checks.get("likeness")), bool(result.checks.get("content_safety")), attempts,
                   float(result.likeness), float(result.nsfw), float(input_quality), float(latency_ms),
                   bool(result.passed), created_at or _now())


@dataclass(frozen=True)
class Window:
    """A time bucket: `seconds` long, aligned to the epoch (3600 = clock hours)."""

    start: datetime
    seconds: int

    @classmethod
    def of(cls, ts: datetime, seconds: int) -> Window:
        ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        epoch = int(ts.timestamp()) // seconds * seconds
        return cls(datetime.fromtimestamp(epoch, timezone.utc), seconds)

    def prefix(self) -> str:
        s = self.start
        path = f"date={s:%Y-%m-%d}/hour={s:%H}"
        return path if self.seconds >= 3600 else f"{path}/minute={s:%M}"


class UsageLog:
    """Thread-safe buffered Parquet writer; rows become readable after `flush()` (or window change / size / close).
    With `journal_dir`, rows are durable as soon as `append` returns (see the module docstring)."""

    def __init__(self, root_uri: str, window_seconds: int = 3600, max_rows: int = 10_000,
                 journal_dir: str | Path | None = None) -> None:
        self.filesystem, self.root = pafs.FileSystem.from_uri(_as_uri(root_uri))
        self.window_seconds = window_seconds
        self.max_rows = max_rows
        self.writer_id = uuid.uuid4().hex[:12]
        self._buffers: dict[Window, list[UsageRecord]] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._closed = False
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self.recovered = self.recover() if self.journal_dir is not None else 0
        self.journal = Journal(self.journal_dir, self.writer_id) if self.journal_dir is not None else None

    def append(self, record: UsageRecord) -> None:
        """Buffer one row (journalled first, when there is a journal); a row of a newer window or a full buffer
        writes what is buffered."""
        window = Window.of(record.created_at, self.window_seconds)
        with self._lock:
            if self._closed:
                raise RuntimeError("usage log is closed")
            if self.journal is not None:
                self.journal.append(_row(record))
            older = [w for w in self._buffers if w.start < window.start]
            rows = self._buffers.setdefault(window, [])
            rows.append(record)
            if self.journal is not None:
                if older or len(rows) >= self.max_rows:
                    self._flush_segment()
                return
            for old in older:
                self._write(old, self._buffers.pop(old))
            if len(rows) >= self.max_rows:
                self._write(window, self._buffers.pop(window))

    def flush(self) -> list[str]:
        """Write every buffered window; returns the paths written."""
        with self._lock:
            if self.journal is not None:
                return self._flush_segment()
            return [self._write(w, self._buffers.pop(w)) for w in sorted(self._buffers, key=lambda w: w.start)]

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            if self.journal is not None:
                self.journal.close()

    def recover(self) -> int:
        """Compact the journal segments of writers that died on this node; returns the rows recovered."""
        if self.journal_dir is None or not self.journal_dir.exists():
            return 0
        count = 0
        for segment in Journal.orphans(self.journal_dir):
            try:
                records = [_record(row) for row in segment.rows()]
                self._compact(segment.name, records)
                segment.path.unlink(missing_ok=True)
                count += len(records)
            finally:
                segment.close()
        return count

    def __enter__(self) -> UsageLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush_segment(self) -> list[str]:
        """Seal the journal segment, write its rows (the buffers hold exactly them), delete it."""
        records = [r for w in sorted(self._buffers, key=lambda w: w.start) for r in self._buffers[w]]
        self._buffers.clear()
        if not records:
            return []
        sealed = self.journal.rotate()
        try:
            paths = self._compact(sealed.name, records)
            sealed.path.unlink(missing_ok=True)
        finally:
            sealed.close()
        return paths

    def _compact(self, segment: str, records: list[UsageRecord]) -> list[str]:
        """One Parquet file per window of `records`, named after the segment: rewriting it is idempotent."""
        windows: dict[Window, list[UsageRecord]] = {}
        for r in records:
            windows.setdefault(Window.of(r.created_at, self.window_seconds), []).append(r)
        return [self._write(w, rows, name=f"part-{w.start:%Y%m%dT%H%M}-{segment}")
                for w, rows in sorted(windows.items(), key=lambda kv: kv[0].start)]

    def _write(self, window: Window, rows: list[UsageRecord], name: str | None = None) -> str:
        directory = f"{self.root.rstrip('/')}/{window.prefix()}"
        self.filesystem.create_dir(directory, recursive=True)
        if name is None:
            self._seq += 1
            name = f"part-{window.start:%Y%m%dT%H%M}-{self.writer_id}-{self._seq:05d}"
        path = f"{directory}/{name}.parquet"
        tmp = f"{directory}/.{name}.parquet.tmp"     # dataset readers skip dot files; the move publishes it whole
        pq.write_table(_table(rows), tmp, filesystem=self.filesystem)
        self.filesystem.move(tmp, path)
        return path


def _row(record: UsageRecord) -> dict:
    row = dataclasses.asdict(record)
    row["created_at"] = record.created_at.isoformat()
    return row


def _record(row: dict) -> UsageRecord:
    row = dict(row)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return UsageRecord(**row)


def _table(rows: list[UsageRecord]) -> pa.Table:
    cols = {f.name: [getattr(r, f.name) for r in rows] for f in dataclasses.fields(UsageRecord)}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def _as_uri(root: str) -> str:
    """Plain paths become absolute file URIs; scheme URIs (s3://, gs://, file://) pass through."""
    if "://" in root:
        return root
    from pathlib import Path
    return Path(root).expanduser().resolve().as_uri()


MAX_EXPORT_ROWS = 100_000


def read_usage(root_uri: str, account: str | None = None, start: datetime | None = None,
               end: datetime | None = None, outcome: str | None = None, exclude_outcome: str | None = None,
               limit: int = MAX_EXPORT_ROWS) -> pa.Table:
    """Rows of the log in [start, end), oldest first, optionally of one account; the date partitions outside the range
    are not read. Files written before a column existed read it as null. Bounds with any UTC offset are compared as
    instants (naive ones are UTC)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    start, end = _utc(start), _utc(end)
    filesystem, root = pafs.FileSystem.from_uri(_as_uri(root_uri))
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return SCHEMA.empty_table()
    schema = SCHEMA.append(pa.field("date", pa.string()))
    dataset = ds.dataset(root, filesystem=filesystem, format="parquet", schema=schema,
                         partitioning=ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive"),
                         exclude_invalid_files=False)
    where = pc.scalar(True)
    if account is not None:
        where &= ds.field("account") == account
    if start is not None:
        where &= (ds.field("date") >= f"{start:%Y-%m-%d}") & (ds.field("created_at") >= pc.scalar(start))
    if end is not None:
        where &= (ds.field("date") <= f"{end:%Y-%m-%d}") & (ds.field("created_at") < pc.scalar(end))
    if outcome is not None:
        where &= ds.field("outcome") == outcome
    if exclude_outcome is not None:
        where &= ds.field("outcome") != exclude_outcome
    table = dataset.to_table(filter=where, columns=SCHEMA.names)
    return table.sort_by([("created_at", "ascending"), ("request_id", "ascending")]).slice(0, limit)


def _utc(value: datetime | None) -> datetime | None:
    """The instant in UTC, as the log stores it: its partitions are UTC dates, and Arrow compares timestamps of one
    time zone only."""
    if value is None:
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def decline_rates(root_uri: str, start: datetime | None = None, end: datetime | None = None) -> dict:
    """Decline rates by style and platform from the log's feedback rows (the latest report per avatar counts)."""
    from avatar.store.feedback import decline_rates as tabulate
    latest: dict[str, tuple] = {}
    for row in read_usage(root_uri, start=start, end=end, outcome=FEEDBACK, limit=2**62).to_pylist():
        style = "custom" if row["style"].startswith("sty_") else row["style"]
        latest[row["request_id"]] = (style, row["platform"], row["feedback"], 1)
    return tabulate(latest.values())
