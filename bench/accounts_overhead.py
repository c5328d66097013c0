"""What the shared account state costs a generate request: API-key check, rate-limit token, credit hold and settle,
on the embedded SQLite file and on a PostgreSQL server (started here in a temp dir, as the tests do).

Prints per-request milliseconds (p50, p95) for one caller, and the throughput of 4 processes charging one account at
once (the contended case: every request takes the same balance row and bucket).

    .venv/bin/python bench/accounts_overhead.py [--requests 300]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

os.environ.setdefault("AVATAR_ACCOUNT_PEPPER", "bench pepper")


def _one_request(store, limiter, ledger, account: str, key: str, request_id: str) -> None:
    assert store.authenticate(key) == account
    limiter.take(f"acct:{account}", rate_per_s=1e6, capacity=10**6)
    ledger.hold(account, request_id, "corporate_headshot", "generic", 1)
    ledger.settle(request_id, billable=True)


def _open(url: str):
    from avatar.store.accounts import SqlAccountStore
    from avatar.store.credits import Ledger
    from avatar.store.database import open_database
    from avatar.store.ratelimit import RateLimiter
    db = open_database(url)
    return SqlAccountStore(db, pepper=b"bench pepper"), RateLimiter(db), Ledger(db)


def _worker(args: tuple[str, str, str, int, int]) -> float:
    url, account, key, start, n = args
    store, limiter, ledger = _open(url)
    t0 = time.perf_counter()
    for i in range(start, start + n):
        _one_request(store, limiter, ledger, account, key, f"req_p{i:08d}")
    return time.perf_counter() - t0


def measure(name: str, url: str, n: int) -> None:
    store, limiter, ledger = _open(url)
    account, key = store.create_account("bench")
    ledger.grant(account, 10**9)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        _one_request(store, limiter, ledger, account, key, f"req_s{i:08d}")
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p50, p95 = statistics.median(times), times[int(0.95 * (len(times) - 1))]
    procs = 4
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(_worker, [(url, account, key, k * n, n) for k in range(procs)])
    wall = time.perf_counter() - t0
    print(f"{name:10s} one caller: p50 {p50:6.2f} ms  p95 {p95:6.2f} ms | {procs} processes, one account: "
          f"{procs * n / wall:7.0f} requests/s (incl. process start)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("sqlite", f"sqlite:///{tmp}/bench.sqlite3", args.requests)
    from servers import start_postgres
    server = start_postgres()
    try:
        measure("postgresql", server.new_database(), args.requests)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
