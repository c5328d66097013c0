"""What the Serve graph costs on top of the models: the in-process pipeline and the Serve app through HTTP, run on
the same photo in one process, and the difference.

    .venv/bin/python bench/overhead.py [--requests 15] [--style corporate_headshot]

Prints p50/p95 of both paths for a 512 px JPEG -> 800 px avatar, the overhead (HTTP p50 - in-process p50), the
time the stages themselves report (sum of stage_ms), and what one hop's image encoding costs (PNG vs raw pixels).
Targets on 2 cores: overhead <= 60 ms and HTTP p50 <= 0.55 s.
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
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import pct, photo_b64  # noqa: E402


def hop_encoding_ms(side: int, repeat: int = 20) -> tuple[float, float]:
    """(PNG level 1 encode+decode, raw Pixels pack+unpack) for one `side` px RGB image, in ms."""
    from avatar.vision.imageio import Pixels, decode_trusted, encode_lossless
    image = np.asarray(Image.fromarray(_photo()).resize((side, side)))
    t0 = time.perf_counter()
    for _ in range(repeat):
        decode_trusted(encode_lossless(image))
    png = (time.perf_counter() - t0) / repeat * 1000
    t0 = time.perf_counter()
    for _ in range(repeat):
        Pixels.of(image).array()
    raw = (time.perf_counter() - t0) / repeat * 1000
    return png, raw


def _photo() -> np.ndarray:
    from skimage import data
    return data.astronaut()


def in_process(body: dict, n: int) -> tuple[list[float], list[float]]:
    """Latency and summed stage time of `n` requests through LocalPipeline (same stages, no Serve)."""
    from avatar.contracts import GenerateRequest, parse_request
    from avatar.job import PhotoInput
    from avatar.flow.local import LocalPipeline
    req = parse_request(GenerateRequest, {**body, "image": ""})
    photo = base64.b64decode(body["image"])
    lat, stage_sum = [], []
    with tempfile.TemporaryDirectory() as store, \
            LocalPipeline(configs={"save_avatar": {"storage_uri": store}}) as pipeline:
        pipeline.generate(req, PhotoInput(data=photo))   # warm-up
        for _ in range(n):
            t0 = time.perf_counter()
            job = pipeline.generate(req, PhotoInput(data=photo))
            lat.append((time.perf_counter() - t0) * 1000)
            stage_sum.append(sum(job.timings.values()))
    return lat, stage_sum


def over_http(url: str, body: dict, n: int) -> tuple[list[float], list[float]]:
    lat, stage_sum = [], []
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post("/v1/avatar/generate", json=body).raise_for_status()   # warm every replica
        for _ in range(n):
            t0 = time.perf_counter()
            resp = client.post("/v1/avatar/generate", json=body)
            lat.append((time.perf_counter() - t0) * 1000)
            resp.raise_for_status()
            stage_sum.append(sum(resp.json()["stage_ms"].values()))
    return lat, stage_sum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--style", default="corporate_headshot")
    args = parser.parse_args()
    body = {"image": photo_b64(512), "style": args.style, "platform": "generic"}

    for side in (512, 800):
        png, raw = hop_encoding_ms(side)
        print(f"one hop of a {side} px image: PNG encode+decode {png:.1f} ms, raw pixels {raw:.2f} ms")

    local_lat, local_stages = in_process(body, args.requests)

    os.environ.setdefault("AVATAR_DATA_DIR", tempfile.mkdtemp(prefix="avatar-bench-"))
    from ray import serve

    from service.launcher import deploy, free_port, init_local_ray
    import ray
    init_local_ray(temp_dir=tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    try:
        port = free_port()
        deploy(profile="cpu", port=port)
        http_lat, http_stages = over_http(f"http://127.0.0.1:{port}", body, args.requests)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{'path':12s} {'p50 ms':>8s} {'p95 ms':>8s} {'stages ms':>10s}   ({args.requests} requests, {args.style},"
          f" 512 px JPEG -> 800 px)")
    for name, lat, stages in (("in-process", local_lat, local_stages), ("serve+http", http_lat, http_stages)):
        print(f"{name:12s} {pct(lat, 50):8.0f} {pct(lat, 95):8.0f} {statistics.median(stages):10.0f}")
    overhead = pct(http_lat, 50) - pct(local_lat, 50)
    print(f"\nServe overhead (HTTP p50 - in-process p50): {overhead:.0f} ms (target <= 60 ms); "
          f"HTTP p50 {pct(http_lat, 50) / 1000:.3f} s (target <= 0.55 s)")


if __name__ == "__main__":
    main()
