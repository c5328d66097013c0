"""Giving memory back to the OS after large requests.

glibc keeps freed heap memory in its arenas (one per thread that allocated, up to 8 per core), so a replica that
decoded a few 40-megapixel photos in worker threads stays at its peak RSS for good. `MALLOC_ARENA_MAX=2` (set for
every Ray process by the launcher and in k8s) bounds the arenas, and fixed mmap/trim thresholds (`MALLOC_ENV`) keep
a request's working set in the heap from one request to the next instead of unmapping and faulting it in again
(~5,500 page faults per avatar in-process). `release()` asks pyarrow's memory pool and glibc to return free pages
(`malloc_trim`) when a call left more than `large_free_bytes` free (a large input), and once when calls stop: a
steady stream of normal requests keeps its working set. There is no packaged binding for malloc_trim and mallinfo2,
hence the few lines of ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
from typing import Callable

_lock = threading.Lock()
_last = 0.0       # monotonic time of the last trim
_called = 0.0     # monotonic time of the last release() call
_pending = False  # an idle trim is scheduled
_libc = None

# Every Ray process of the service (launcher and k8s pods): requests' arrays stay in the heap (below 32 MB, e.g. an
# 800 px float image) and free() does not hand heap tops back below 128 MB; release() does that when it is worth it.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
              "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
        info = getattr(_libc, "mallinfo2", None) if _libc else None
        if info is not None:
            info.restype = _MallInfo2
    return _libc


def free_heap_bytes() -> int | None:
    """Free bytes held in glibc's arenas (all of them), or None without glibc's mallinfo2."""
    libc = _glibc()
    info = getattr(libc, "mallinfo2", None) if libc else None
    return int(info().fordblks) if info is not None else None


def _trim() -> bool:
    """pyarrow's own allocator (storage writes, the usage log) first, then glibc's heap."""
    import sys
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    return _malloc_trim()


def _malloc_trim() -> bool:
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None) if libc else None
    return bool(trim(0)) if trim is not None else False


def release(min_interval_s: float = 2.0, large_free_bytes: int = 64 * 2**20,
            clock: Callable[[], float] = time.monotonic) -> bool:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere). Cheap to call after every request: trims now
    when more than `large_free_bytes` lie free (at most once per `min_interval_s`), else makes sure one trim follows
    once no call has come for `min_interval_s`."""
    global _last, _called, _pending
    now = clock()
    free = free_heap_bytes()
    with _lock:
        _called = now
        if (free is None or free > large_free_bytes) and now >= _last + min_interval_s:
            _last = now
            trim = True
        else:
            trim = False
            if not _pending:
                _pending = True
                _schedule(min_interval_s, min_interval_s, clock)
    return _trim() if trim else False


def _schedule(delay: float, min_interval_s: float, clock: Callable[[], float]) -> None:
    timer = threading.Timer(delay, _idle, args=(min_interval_s, clock))
    timer.daemon = True
    timer.start()


def _idle(min_interval_s: float, clock: Callable[[], float]) -> None:
    """The trim once calls stop: unreachable cycles (failed requests keep frames, and the arrays in them, in
    tracebacks) are collected first, so their pages can go back too. While calls keep coming it waits on."""
    global _last, _pending
    with _lock:
        quiet_for = clock() - _called
        if quiet_for < min_interval_s:
            _schedule(min_interval_s - quiet_for, min_interval_s, clock)
            return
        _pending = False
        _last = clock()
    gc.collect()
    _trim()
