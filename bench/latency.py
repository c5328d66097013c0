"""End-to-end latency, per-stage time, throughput and replica memory of the avatar service, through HTTP.

Starts the embedded service (a local Ray of its own in a private temp dir, CPU profile, on a free port; stopped at the
end) unless `--url` points at a running one, then for each style and output size sends `--requests` sequential
requests with a 512x512 photo and reports p50/p95 of the end-to-end latency and the mean of each stage; then
`--concurrency` parallel clients for throughput; then the memory of the started cluster's Serve processes (RSS and
USS, summed). Targets on a 2-core CPU machine: p50 <= 1.5 s at 800 px, all replicas < 4 GiB.
`make bench BENCH_ARGS="--requests 1 --sizes standard --styles corporate_headshot --concurrency 1"` is a quick run.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
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
    """RSS and USS (GiB) of this cluster's Serve processes (controller, proxy, replicas), from its own actor table:
    other Ray clusters on the machine are not counted."""
    import psutil
    from ray._private import state
    rss = uss = 0
    count = 0
    for actor in state.actors().values():
        if actor["State"] != "ALIVE" or not actor.get("Pid"):
            continue
        name = actor["ActorClassName"]
        if not ("ServeReplica" in name or "ServeController" in name or "ProxyActor" in name):
            continue
        try:
            info = psutil.Process(int(actor["Pid"])).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        uss += info.uss
        count += 1
    return rss / 2**30, uss / 2**30, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running service (memory is not measured then); default: start the "
                                      "embedded one on a free port")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sizes", default="standard,high")
    parser.add_argument("--styles", default=",".join(STYLES))
    args = parser.parse_args()
    if args.url:
        measure(args, args.url)
        return
    import ray
    from ray import serve

    from service.launcher import deploy, free_port, init_local_ray
    os.environ.setdefault("AVATAR_DATA_DIR", tempfile.mkdtemp(prefix="avatar-bench-"))
    temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")   # a Ray of its own, beside any other on the machine
    init_local_ray(temp_dir=temp)
    try:
        port = free_port()
        deploy(profile="cpu", port=port)
        measure(args, f"http://127.0.0.1:{port}")
        rss, uss, count = replica_memory()
        print(f"memory of {count} Serve processes: RSS {rss:.2f} GiB, USS {uss:.2f} GiB (target < 4 GiB)")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def measure(args: argparse.Namespace, url: str) -> None:
    image = photo_b64()
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post("/v1/avatar/generate", json={"image": image}).raise_for_status()   # warm every replica
        print(f"{'style':20s} {'size':>5s} {'p50 ms':>8s} {'p95 ms':>8s}   mean per stage (ms)")
        for resolution in args.sizes.split(","):
            for style in args.styles.split(","):
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

if __name__ == "__main__":
    main()
