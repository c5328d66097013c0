"""A local append-only journal of JSON rows that survives a crash of the writing process (SIGKILL included).

Each `append` writes one line and fsyncs it before returning, so a caller that answers only after `append` never
answers for a row that is not on disk. Rows go to the current segment file (`<writer>-<n>.jsonl`); `rotate` seals it
for the caller to compact elsewhere and delete. A live writer holds an exclusive `flock` on its open segments, which
the kernel releases when the process dies however it dies: `orphans` hands out exactly the segments whose writer is
gone, each locked for the one process that recovers it. Written by hand because no packaged write-ahead log is
local-file, dependency-free and process-crash-aware in this way (SQLite would do, at the cost of one database per
writer and its own locking against the Parquet compaction).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIX = ".jsonl"


@dataclass
class Segment:
    """An open, locked segment file; `close` releases the lock (after `path` is deleted, or to leave it for later)."""

    path: Path
    fd: int

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete line; a torn last line (the writer died inside `append`) was never acknowledged."""
        with open(self.path, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        return [json.loads(line) for line in lines[:-1] if line.strip()]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)   # releases the flock
            self.fd = -1


class Journal:
    """One writer's journal under `directory` (node-local disk; the directory may be shared by many writers)."""

    def __init__(self, directory: str | Path, writer_id: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id
        self._seq = 0
        self.current = self._open_next()

    def _open_next(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self.writer_id}-{self._seq:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, fd)

    def append(self, row: dict[str, Any]) -> None:
        """Write `row` durably (one line, fsync) into the current segment."""
        line = (json.dumps(row, separators=(",", ":"), default=str) + "\n").encode()
        os.write(self.current.fd, line)
        os.fsync(self.current.fd)

    def rotate(self) -> Segment:
        """Seal the current segment and start the next; the caller compacts the sealed one, deletes its file and
        closes it."""
        sealed, self.current = self.current, self._open_next()
        return sealed

    def close(self) -> None:
        """Leave the current segment on disk (empty ones are removed); its rows are recovered by the next writer."""
        if os.fstat(self.current.fd).st_size == 0:
            self.current.path.unlink(missing_ok=True)
        self.current.close()

    @staticmethod
    def orphans(directory: str | Path) -> Iterator[Segment]:
        """Segments of writers that are gone, each locked for the caller (skips live writers' and ones another
        recovering process holds)."""
        for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not path.exists():   # recovered and deleted by another process between our open and our lock
                os.close(fd)
                continue
            yield Segment(path, fd)
