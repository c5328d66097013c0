"""A/B of the in-process pipeline: two configurations built side by side in one process, requests interleaved.

    .venv/bin/python bench/ab.py [--requests 20] [--lever all|identity|tiles|png|esr|cv2_threads] [--style ...]

`all` compares the settings of the landed main before the speed work (dlib identity, face-count tiles on every photo,
PNG level 3, Real-ESRGAN fed 128 px) with the current defaults; each other lever reverts one of them alone. On a
machine other work is running on, absolute times drift from minute to minute; alternating A and B request by request
(the order swapped every round) exposes both to the same drift, so the per-stage ratio of medians is what to read.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BEFORE: dict[str, dict[str, Any]] = {
    "identity": {"face_detect": {"identity_model": "dlib"}, "quality_gate": {"identity_model": "dlib"}},
    "tiles": {"face_detect": {"face_count_tiles": "always"}},
    "png": {"save_avatar": {"png_compress_level": 3}},
    "esr": {"detail_enhance": {"esr_max_input": 128}},
}


@dataclass
class Variant:
    name: str
    configs: dict[str, dict[str, Any]]
    cv2_threads: int | None = None
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)


def _merge(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for stage, cfg in part.items():
            out.setdefault(stage, {}).update(cfg)
    return out


def variants(lever: str) -> tuple[Variant, Variant]:
    if lever == "all":
        return Variant("before", _merge(*BEFORE.values())), Variant("now", {})
    if lever == "cv2_threads":
        import cv2
        return Variant(f"cv2 {cv2.getNumThreads()} threads", {}), Variant("cv2 1 thread", {}, cv2_threads=1)
    return Variant(f"{lever} before", BEFORE[lever]), Variant(f"{lever} now", {})


def run(a: Variant, b: Variant, requests: int, style: str) -> None:
    import cv2

    from avatar.contracts import GenerateRequest, parse_request
    from avatar.flow.local import LocalPipeline
    from avatar.job import PhotoInput
    from bench.latency import photo_b64

    photo = base64.b64decode(photo_b64(512))
    req = parse_request(GenerateRequest, {"image": "", "style": style, "platform": "generic"})
    default_threads = cv2.getNumThreads()
    with tempfile.TemporaryDirectory() as store:
        pipes = {}
        for v in (a, b):
            pipes[v.name] = LocalPipeline(configs=_merge({"save_avatar": {"storage_uri": store}}, v.configs))
        try:
            for i in range(requests + 2):
                for v in ((a, b) if i % 2 == 0 else (b, a)):
                    cv2.setNumThreads(v.cv2_threads or default_threads)
                    t0 = time.perf_counter()
                    job = pipes[v.name].generate(req, PhotoInput(data=photo))
                    if i < 2:
                        continue   # warm-up rounds
                    v.latencies.append((time.perf_counter() - t0) * 1000)
                    for stage, ms in job.timings.items():
                        v.stages.setdefault(stage, []).append(ms)
        finally:
            cv2.setNumThreads(default_threads)
            for p in pipes.values():
                p.close()


def report(a: Variant, b: Variant, requests: int, style: str) -> None:
    print(f"{requests} interleaved requests each, {style}, 512 px JPEG -> 800 px, in-process; medians in ms")
    print(f"{'stage':16s} {a.name:>18s} {b.name:>18s} {'ratio':>7s}")
    for stage in a.stages:
        ma, mb = statistics.median(a.stages[stage]), statistics.median(b.stages.get(stage, [float('nan')]))
        print(f"{stage:16s} {ma:18.1f} {mb:18.1f} {mb / ma if ma else float('nan'):7.2f}")
    la, lb = statistics.median(a.latencies), statistics.median(b.latencies)
    print(f"{'end to end':16s} {la:18.0f} {lb:18.0f} {lb / la:7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--lever", default="all", choices=("all", "cv2_threads", *BEFORE))
    parser.add_argument("--style", default="corporate_headshot")
    args = parser.parse_args(argv)
    a, b = variants(args.lever)
    run(a, b, args.requests, args.style)
    report(a, b, args.requests, args.style)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
