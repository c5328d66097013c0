"""Avatars per second per core for the two batch paths on the same photos:

- Ray Data (`avatar batch`, `batch/directory.py`): photos in a folder, an actor pool holding the pure stages;
- the Serve batch route (`POST /v1/batches`): the JobRunner sends each member through the stage replicas.

    .venv/bin/python bench/batch_throughput.py [--photos 20] [--cpus 2] [--actors 2] [--runner-concurrency 4]

Each path gets a fresh local Ray of `--cpus` CPUs (one after the other, never both at once). Timed from the start of
the work (Ray Data: the run, models loading in the actors included; Serve: the 202 of the batch, with the app
already deployed and warm) to the last avatar written. Prints the figures and the machine's load average.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.team_look import photos  # noqa: E402


def jpegs(count: int) -> list[tuple[str, bytes]]:
    base = list(photos().items())
    out = []
    for i in range(count):
        name, img = base[i % len(base)]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append((f"{name}_{i:03d}", buf.getvalue()))
    return out


def ray_data(items: list[tuple[str, bytes]], cpus: int, actors: int):
    import ray

    from batch.directory import BatchOptions, run
    from service.launcher import init_local_ray
    src, out = tempfile.mkdtemp(prefix="bench-src-"), tempfile.mkdtemp(prefix="bench-out-")
    for name, data in items:
        Path(src, f"{name}.jpg").write_bytes(data)
    init_local_ray(num_cpus=cpus, temp_dir=tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    try:
        summary = run(src, out, BatchOptions(platform="linkedin", actors=actors, cpus_per_actor=cpus / actors),
                      progress=False)
    finally:
        ray.shutdown()
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    assert summary.succeeded == len(items), summary
    return summary


def serve_batch(items: list[tuple[str, bytes]], cpus: int, concurrency: int) -> float:
    import ray
    from ray import serve

    from avatar.store.accounts import open_account_store
    from service.launcher import deploy, free_port, init_local_ray
    data = tempfile.mkdtemp(prefix="bench-data-")
    os.environ.update({"AVATAR_DATA_DIR": data, "AVATAR_SIGNING_SECRET": "bench"})
    _, key = open_account_store().create_account("bench")
    init_local_ray(num_cpus=cpus, temp_dir=tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port = free_port()
    try:
        deploy(profile="cpu", port=port, overrides={"JobRunner": {"max_concurrency": concurrency, "poll_s": 0.1}})
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            warm = [{"external_id": "warm", "image": base64.b64encode(items[0][1]).decode()}]
            _wait(client, client.post("/v1/batches", json={"items": warm, "platform": "linkedin"}).json())
            body = {"items": [{"external_id": n, "image": base64.b64encode(d).decode()} for n, d in items],
                    "platform": "linkedin"}
            started = time.perf_counter()
            job = _wait(client, client.post("/v1/batches", json=body).json())
            seconds = time.perf_counter() - started
            assert job["progress"]["succeeded"] == len(items), job["progress"]
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)
    return seconds


def _wait(client: httpx.Client, accepted: dict) -> dict:
    while True:
        job = client.get(accepted["status_url"]).json()
        if job["state"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--runner-concurrency", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    items = jpegs(args.photos)
    print(f"load average before: {os.getloadavg()}")
    rd = ray_data(items, args.cpus, args.actors)
    print(f"Ray Data   : {len(items)} avatars in {rd.seconds:6.1f} s = {rd.avatars_per_s:.2f}/s, "
          f"{rd.avatars_per_s / args.cpus:.2f}/s per core ({args.actors} actors, start-up included); "
          f"after the first results ({rd.first_result_s:.1f} s): {rd.steady_per_s:.2f}/s, "
          f"{rd.steady_per_s / args.cpus:.2f}/s per core; one photo in an actor: {rd.mean_photo_ms:.0f} ms "
          f"({args.actors * 1000 / rd.mean_photo_ms / args.cpus:.2f}/s per core from that)")
    print(f"load average: {os.getloadavg()}")
    sv = serve_batch(items, args.cpus, args.runner_concurrency)
    print(f"Serve batch: {len(items)} avatars in {sv:6.1f} s = {len(items) / sv:.2f}/s, "
          f"{len(items) / sv / args.cpus:.2f}/s per core (runner concurrency {args.runner_concurrency}, warm app)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
