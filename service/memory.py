"""Giving memory back to the OS after large requests.

glibc keeps freed heap memory in its arenas (one per thread that allocated, up to 8 per core) and raises its mmap
threshold after large frees, so a replica that decoded a few 40-megapixel photos in worker threads stays at its
peak RSS for good. `MALLOC_ARENA_MAX=2` (set for every Ray process by the launcher and in k8s) bounds the arenas;
`release()` asks pyarrow's memory pool and glibc to return free pages (`malloc_trim`), at most once per
`min_interval_s` per process. There is no packaged binding for malloc_trim, hence the few lines of ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time

_lock = threading.Lock()
_last = 0.0
_pending = False
_libc = None


def _trim() -> bool:
    """pyarrow's own allocator (storage writes, the usage log) first, then glibc's heap."""
    import sys
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    return _malloc_trim()


def _malloc_trim() -> bool:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    return bool(trim(0)) if trim is not None else False


def release(min_interval_s: float = 2.0) -> bool:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere). Cheap to call after every request: within
    `min_interval_s` of the last trim it only makes sure one more trim follows, so the end of a burst is trimmed too."""
    global _last, _pending
    now = time.monotonic()
    with _lock:
        wait = _last + min_interval_s - now
        if wait > 0:
            if not _pending:
                _pending = True
                timer = threading.Timer(wait, _deferred)
                timer.daemon = True
                timer.start()
            return False
        _last = now
    return _trim()


def _deferred() -> None:
    """The trim at the end of a burst: unreachable cycles (failed requests keep frames, and the arrays in them, in
    tracebacks) are collected first, so their pages can go back too."""
    global _last, _pending
    with _lock:
        _pending = False
        _last = time.monotonic()
    gc.collect()
    _trim()
