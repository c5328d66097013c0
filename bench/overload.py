"""The embedded service driven past capacity: accepted throughput, latency of accepted requests, the share and
latency of refusals, and the memory of the Serve processes before, at the peak and after the load.

Starts the embedded service (local Ray, CPU profile, the shipped serve_config.yaml) unless `--url` points at a
running one, warms it, then runs each `--clients` level for `--seconds`: every client sends generate requests back to
back (a 512x512 portrait, 800 px output), and a refused one (503/429) waits its Retry-After before the next (the
`retry` column: the median Retry-After refusals carried). Then it
waits `--settle` seconds and measures memory again. "Idle" is measured after a warm-up of 12 requests from 4 clients,
so buffers that model runtimes size on first use count as idle, not as load.

Targets on 2 cores: refusals answered fast (p95 <= 0.5 s at 32 clients: the admission gate refuses a request it
expects to wait too long at once, rather than after a wait), accepted p95 < 10 s, memory back within 20% of idle
after the load. The machine's load average is printed before and during each level: other work on the machine slows
the service and shows there.

    .venv/bin/python bench/overload.py [--clients 8,32,96] [--seconds 60] [--settle 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import pct, photo_b64, replica_memory  # noqa: E402


def drive(url: str, image: str, clients: int, seconds: float) -> dict:
    """`clients` closed-loop clients for `seconds`; outcomes and latencies by kind."""
    stop = time.monotonic() + seconds
    accepted: list[float] = []
    refused: list[float] = []
    retry_after: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    peak = {"rss": 0.0}

    def client(_: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    resp = http.post("/v1/avatar/generate", json={"image": image, "platform": "linkedin"})
                    status = resp.status_code
                except httpx.HTTPError:
                    status = 0
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    statuses[status] += 1
                    (accepted if status == 200 else refused if status in (429, 503) else []).append(ms)
                if status in (429, 503):
                    wait = float(resp.headers.get("retry-after", "1"))
                    with lock:
                        retry_after.append(wait)
                    time.sleep(wait)

    health: list[float] = []

    def sample() -> None:
        """Peak memory, and what a health check costs meanwhile (the floor of any answer through the proxy and
        the ingress: a refusal cannot be cheaper)."""
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < stop:
                peak["rss"] = max(peak["rss"], memory()[0])
                t0 = time.perf_counter()
                try:
                    http.get("/healthz")
                    health.append((time.perf_counter() - t0) * 1000)
                except httpx.HTTPError:
                    pass
                time.sleep(1)

    started = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    sampler.join(5)
    return {"clients": clients, "wall": wall, "accepted": accepted, "refused": refused, "statuses": statuses,
            "retry_after": retry_after,
            "peak_rss": peak["rss"], "health": health}


def per_process() -> dict[str, float]:
    """RSS (MiB) per Serve actor of this cluster, by deployment."""
    import psutil
    import ray
    from ray._private import state
    if not ray.is_initialized():
        return {}
    out: dict[str, float] = {}
    for actor in state.actors().values():
        name = actor["ActorClassName"]
        if actor["State"] == "ALIVE" and actor.get("Pid") and ("Serve" in name or "Proxy" in name):
            try:
                out[name.rsplit(":", 1)[-1]] = psutil.Process(int(actor["Pid"])).memory_info().rss / 2**20
            except psutil.Error:
                pass
    return out


def memory() -> tuple[float, float, int]:
    import ray
    return replica_memory() if ray.is_initialized() else (float("nan"), float("nan"), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (memory is not measured then); default: start the "
                                      "embedded one")
    parser.add_argument("--clients", default="8,32,96", help="concurrent clients per level")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each level")
    parser.add_argument("--settle", type=float, default=60.0, help="idle time before the last memory reading")
    args = parser.parse_args()

    if not args.url:
        os.environ.setdefault("AVATAR_DATA_DIR", tempfile.mkdtemp(prefix="avatar-bench-"))
        from service.launcher import deploy, free_port, init_local_ray
        init_local_ray(temp_dir=tempfile.mkdtemp(prefix="rb", dir="/tmp"))
        port = free_port()   # the machine may run other services (and other runs of this bench)
        deploy(profile="cpu", port=port)
        args.url = f"http://127.0.0.1:{port}"
    image = photo_b64()
    with httpx.Client(base_url=args.url, timeout=300) as http, ThreadPoolExecutor(4) as pool:
        # warm every replica at the concurrency it will see: model runtimes size their buffers on first use
        list(pool.map(lambda _: http.post("/v1/avatar/generate", json={"image": image}).raise_for_status(),
                      range(12)))
    time.sleep(10)
    idle, _, count = memory()
    before = per_process()
    print(f"load average before: {os.getloadavg()[0]:.1f}; {count} Serve processes, idle RSS {idle:.2f} GiB")
    print(f"{'clients':>7s} {'accepted/s':>10s} {'acc p50':>8s} {'acc p95':>8s} {'refused':>8s} "
          f"{'ref p50':>8s} {'ref p95':>8s} {'retry':>6s} {'hz p50':>8s} {'hz p95':>8s} {'peak RSS':>9s}  statuses")
    for clients in (int(c) for c in args.clients.split(",")):
        r = drive(args.url, image, clients, args.seconds)
        total = len(r["accepted"]) + len(r["refused"])
        share = len(r["refused"]) / total if total else 0.0
        slow = sum(ms >= 2000 for ms in r["refused"])   # at most this many waited out a 2 s line (or the machine)
        print(f"{clients:7d} {len(r['accepted']) / r['wall']:10.2f} {pct(r['accepted'], 50):7.0f}ms "
              f"{pct(r['accepted'], 95):7.0f}ms {share:7.0%} {pct(r['refused'], 50):7.0f}ms "
              f"{pct(r['refused'], 95):7.0f}ms {pct(r['retry_after'], 50):5.0f}s {pct(r['health'], 50):7.0f}ms "
              f"{pct(r['health'], 95):7.0f}ms {r['peak_rss']:8.2f}G  {dict(r['statuses'])}, {slow} refusals >= 2 s  "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    time.sleep(args.settle)
    after, _, _ = memory()
    print(f"memory after {args.settle:.0f} s idle: RSS {after:.2f} GiB ({(after / idle - 1):+.0%} against idle "
          f"{idle:.2f} GiB); load average {os.getloadavg()[0]:.1f}")
    now = per_process()
    print("  " + ", ".join(f"{name} {before[name]:.0f}->{now.get(name, 0):.0f} MB" for name in sorted(before)))


if __name__ == "__main__":
    main()
