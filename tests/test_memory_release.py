"""A LoadPhoto replica gives memory back after large inputs: RSS after a burst of 24-megapixel photos decoded in
worker threads returns near its idle level (glibc otherwise keeps the freed arenas at their peak). Runs in a fresh
subprocess without MALLOC_ARENA_MAX, so the replica's own release is what is measured."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

PROBE = textwrap.dedent("""
    import asyncio, io, os, psutil
    import numpy as np
    from PIL import Image
    from avatar.job import AvatarJob, PhotoInput
    from deployments.load_photo import LoadPhoto
    replica = LoadPhoto.func_or_class()
    replica.reconfigure({"input_cache": False})

    def jpeg(w, h, seed):
        small = np.random.default_rng(seed).integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((w, h)).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def job():
        return AvatarJob(request_id="req_x", style="", platform="generic", size=0, intensity=0)

    async def main():
        idle_photo, large = jpeg(640, 480, 0), [jpeg(6000, 4000, i) for i in range(6)]
        await replica.run(job(), PhotoInput(data=idle_photo))
        idle = psutil.Process().memory_info().rss
        peak = 0
        for _ in range(3):
            await asyncio.gather(*[replica.run(job(), PhotoInput(data=b)) for b in large])
            peak = max(peak, psutil.Process().memory_info().rss)
        await asyncio.sleep(3)
        await replica.run(job(), PhotoInput(data=idle_photo))
        await asyncio.sleep(3)
        print(idle, peak, psutil.Process().memory_info().rss)
    asyncio.run(main())
""")


def test_memory_returns_after_large_inputs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["AVATAR_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=240,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    idle, peak, after = (int(v) for v in out.stdout.split()[-3:])
    mb = 2**20
    assert peak > idle + 200 * mb, "the burst did not load the replica: the test would prove nothing"
    assert after < idle * 1.2 + 100 * mb, f"idle {idle / mb:.0f} MB, peak {peak / mb:.0f} MB, after {after / mb:.0f} MB"
