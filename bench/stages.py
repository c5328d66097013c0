"""Per-stage time of the in-process pipeline (`avatar/flow/local.py`: the same stages as the Serve app, one process).

    .venv/bin/python bench/stages.py [--requests 20] [--style corporate_headshot] [--resolution standard]
                                     [--profile out.txt]

Runs `--requests` generations of a 512 px JPEG of the astronaut after two warm-ups and prints, per stage, the mean
and median of what the stage reports in `stage_ms`, next to its budget (the per-stage budgets sum to the 400 ms
in-process target on 2 cores), then the end-to-end p50/p95. `--profile` also writes a pyinstrument (else cProfile)
profile of the timed requests. On a machine other work is running on, the absolute figures are inflated: compare
ratios taken in one run (bench/ab.py) rather than figures from different runs.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Budget of each stage in the in-process pipeline (ms, 512 px JPEG -> 800 px, 2 cores): they sum to 400.
BUDGET_MS: dict[str, int] = {"load_photo": 5, "face_detect": 55, "style_apply": 60, "bg_generate": 100,
                             "detail_enhance": 95, "quality_gate": 60, "save_avatar": 25}


def run(requests: int, style: str, resolution: str, profile: str | None) -> tuple[list[float], dict[str, list[float]]]:
    from avatar.contracts import GenerateRequest, parse_request
    from avatar.flow.local import LocalPipeline
    from avatar.job import PhotoInput
    from bench.latency import photo_b64

    photo = base64.b64decode(photo_b64(512))
    req = parse_request(GenerateRequest, {"image": "", "style": style, "platform": "generic",
                                            "resolution": resolution})
    latencies, stages = [], {}
    with tempfile.TemporaryDirectory() as store, \
            LocalPipeline(configs={"save_avatar": {"storage_uri": store}}) as pipeline:
        for _ in range(2):
            pipeline.generate(req, PhotoInput(data=photo))
        profiler = _profiler() if profile else None
        if profiler is not None:
            profiler.start()
        for _ in range(requests):
            t0 = time.perf_counter()
            job = pipeline.generate(req, PhotoInput(data=photo))
            latencies.append((time.perf_counter() - t0) * 1000)
            for name, ms in job.timings.items():
                stages.setdefault(name, []).append(ms)
        if profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.report())
    return latencies, stages


class _Profiler:
    """pyinstrument when installed (wall-clock, readable), else cProfile sorted by cumulative time."""

    def __init__(self) -> None:
        try:
            from pyinstrument import Profiler
            self._impl, self._kind = Profiler(interval=0.0005), "pyinstrument"
        except ImportError:
            import cProfile
            self._impl, self._kind = cProfile.Profile(), "cprofile"

    def start(self) -> None:
        (self._impl.start if self._kind == "pyinstrument" else self._impl.enable)()

    def stop(self) -> None:
        (self._impl.stop if self._kind == "pyinstrument" else self._impl.disable)()

    def report(self) -> str:
        if self._kind == "pyinstrument":
            return self._impl.output_text(unicode=False, color=False, show_all=False)
        import io
        import pstats
        out = io.StringIO()
        pstats.Stats(self._impl, stream=out).sort_stats("cumulative").print_stats(60)
        return out.getvalue()


def _profiler() -> _Profiler:
    return _Profiler()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--style", default="corporate_headshot")
    parser.add_argument("--resolution", default="standard", choices=("standard", "high"))
    parser.add_argument("--profile", default=None, help="write a profile of the timed requests to this file")
    args = parser.parse_args(argv)
    latencies, stages = run(args.requests, args.style, args.resolution, args.profile)
    print(f"{args.requests} requests, {args.style}, 512 px JPEG, {args.resolution} output, in-process")
    print(f"{'stage':16s} {'mean ms':>8s} {'median':>8s} {'budget':>7s}")
    for name, values in stages.items():
        budget = BUDGET_MS.get(name)
        print(f"{name:16s} {statistics.mean(values):8.1f} {statistics.median(values):8.1f} "
              f"{budget if budget is not None else '-':>7}")
    total = sum(statistics.mean(v) for v in stages.values())
    print(f"{'sum of stages':16s} {total:8.1f} {'':8s} {sum(BUDGET_MS.values()):7d}")
    lat = sorted(latencies)
    print(f"end to end p50 {statistics.median(lat):.0f} ms, p95 {lat[int(0.95 * (len(lat) - 1))]:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
