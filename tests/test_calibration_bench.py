"""The likeness calibration script runs on its small set and its figures support the documented thresholds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_calibration_bench_small_set():
    proc = subprocess.run([sys.executable, "bench/likeness_calibration.py", "--small"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()

    def medians(prefix: str) -> tuple[float, float]:
        line = next(line for line in lines if line.startswith(prefix))
        dist, like = re.findall(r"p5/med/p95 ([\d.]+)/([\d.]+)/([\d.]+)", line)
        return float(dist[1]), float(like[1])

    same_d, same_l = medians("same person, high-res")
    diff_d, diff_l = medians("different people, high-res")
    assert same_d < 0.6 < diff_d                      # dlib's published accept distance separates them
    assert same_l >= 0.9 and diff_l < 0.5            # auto-accept for the same person, far below any minimum otherwise
    styles = [line for line in lines if line.startswith("style ")]
    assert len(styles) == 12                          # three styles at four intensities
    for style in ("corporate_headshot", "anime_character", "editorial_portrait"):
        assert any(line.startswith(f"style {style}@0.25") for line in styles)
