"""End-to-end latency, per-stage time, throughput and replica memory of the avatar service, through HTTP.

Starts the embedded service (local Ray, CPU profile) unless `--url` points at a running one, then for each style and
output size sends `--requests` sequential requests with a 512x512 photo and reports p50/p95 of the end-to-end latency
and the mean of each stage; then `--concurrency` parallel clients for throughput; then the memory of every Serve
replica (RSS and USS, summed). Targets on a 2-core CPU machine: p50 <= 1.5 s at 800 px, all replicas < 4 GiB.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STYLES = ("corporate_headshot", "anime_character", "editorial_portrait")


def photo_b64(side: int = 512) -> str:
    from skimage import data
    img = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return base64.b64encode(buf.getvalue()).decode()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_series(client: httpx.Client, body: dict, n: int) -> tuple[list[float], dict[str, list[float]]]:
    lat, stages = [], {}
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.post("/v1/avatar/generate", json=body)
        lat.append((time.perf_counter() - t0) * 1000)
        resp.raise_for_status()
        for k, v in resp.json()["stage_ms"].items():
            stages.setdefault(k, []).append(v)
    return lat, stages


def replica_memory() -> tuple[float, float, int]:
    import psutil
    rss = uss = 0
    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "ServeReplica" in cmd or "ServeController" in cmd or "ProxyActor" in cmd:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            uss += info.uss
            count += 1
    return rss / 2**30, uss / 2**30, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running service; default: start the embedded one")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sizes", default="standard,high")
    args = parser.parse_args()

    if not args.url:
        os.environ.setdefault("AVATAR_DATA_DIR", tempfile.mkdtemp(prefix="avatar-bench-"))
        from service.launcher import deploy, init_local_ray
        init_local_ray(temp_dir=tempfile.mkdtemp(prefix="rb", dir="/tmp"))
        deploy(profile="cpu", port=8123)
        args.url = "http://127.0.0.1:8123"
    image = photo_b64()
    with httpx.Client(base_url=args.url, timeout=300) as client:
        client.post("/v1/avatar/generate", json={"image": image}).raise_for_status()   # warm every replica
        print(f"{'style':20s} {'size':>5s} {'p50 ms':>8s} {'p95 ms':>8s}   mean per stage (ms)")
        for resolution in args.sizes.split(","):
            for style in STYLES:
                body = {"image": image, "style": style, "platform": "generic", "resolution": resolution}
                lat, stages = run_series(client, body, args.requests)
                size = 800 if resolution == "standard" else 1200
                per_stage = " ".join(f"{k}={statistics.mean(v):.0f}" for k, v in stages.items())
                print(f"{style:20s} {size:5d} {pct(lat, 50):8.0f} {pct(lat, 95):8.0f}   {per_stage}")
        n = args.requests * 2
        body = {"image": image, "style": "corporate_headshot"}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            lat = list(pool.map(lambda _: run_series(client, body, 1)[0][0], range(n)))
        wall = time.perf_counter() - t0
        print(f"throughput: {n / wall:.2f} avatars/s with {args.concurrency} concurrent clients "
              f"(p50 {pct(lat, 50):.0f} ms, p95 {pct(lat, 95):.0f} ms)")
    rss, uss, count = replica_memory()
    print(f"memory of {count} Serve processes: RSS {rss:.2f} GiB, USS {uss:.2f} GiB (target < 4 GiB)")


if __name__ == "__main__":
    main()
