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


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trims(monkeypatch):
    """service.memory with a fake heap: `state["free"]` bytes lie free; trims and scheduled idle checks recorded."""
    from service import memory
    state = {"free": 0, "trims": 0, "scheduled": []}
    monkeypatch.setattr(memory, "_last", 0.0)
    monkeypatch.setattr(memory, "_called", 0.0)
    monkeypatch.setattr(memory, "_pending", False)
    monkeypatch.setattr(memory, "free_heap_bytes", lambda: state["free"])
    monkeypatch.setattr(memory, "_trim", lambda: state.__setitem__("trims", state["trims"] + 1) or True)
    monkeypatch.setattr(memory, "_schedule", lambda delay, *args: state["scheduled"].append(delay))
    return memory, state


def test_a_steady_stream_of_normal_requests_keeps_its_working_set_and_trims_once_it_stops(trims):
    memory, state = trims
    clock, mb = _Clock(), 2**20
    state["free"] = 40 * mb                          # what a normal avatar leaves free in a stage's heap
    for _ in range(20):                              # 10 s of requests, one every 0.5 s
        assert memory.release(clock=clock) is False
        clock.now += 0.5
    assert state["trims"] == 0 and state["scheduled"] == [2.0]   # one idle check pending, nothing trimmed
    memory._idle(2.0, clock)                         # 0.5 s after the last call: still busy, it waits on
    assert state["trims"] == 0 and state["scheduled"] == [2.0, 1.5]
    clock.now += 1.5
    memory._idle(2.0, clock)                         # quiet for 2 s: the trim at the end of the burst
    assert state["trims"] == 1 and memory._pending is False


def test_a_call_that_leaves_a_large_heap_free_trims_at_once_at_most_every_interval(trims):
    memory, state = trims
    clock, mb = _Clock(), 2**20
    state["free"] = 300 * mb                         # after a 24-megapixel photo
    assert memory.release(clock=clock) is True and state["trims"] == 1
    clock.now += 1.0
    assert memory.release(clock=clock) is False      # within the interval: only the idle check
    assert state["trims"] == 1 and state["scheduled"] == [2.0]
    clock.now += 1.5
    assert memory.release(clock=clock) is True and state["trims"] == 2


def test_glibc_reports_the_free_heap() -> None:
    from service import memory
    if memory.free_heap_bytes() is None:
        pytest.skip("no glibc mallinfo2 here: release() trims on every call instead")
    blocks = [bytes(16384) for _ in range(4000)]   # 64 MB in heap blocks
    before = memory.free_heap_bytes()
    del blocks[::2]                                # every other one freed: holes glibc cannot hand back by itself
    assert memory.free_heap_bytes() - before > 24 * 2**20
